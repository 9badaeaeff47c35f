"""Run discovery for the explorer: which runs exist, which cases and predictions each one holds, the
images and ground truth behind them, and the per-case metrics.

Every run folder is read through :class:`npcrepro.engine.results.Results` (the experiment runner's
one layout, :mod:`npcrepro.engine.experiment`): there are no per-chapter hooks. A prediction's
*label* is its method (``unet2d``, ``CSCN``), plus ``/<structure>`` when the run predicts several
structures and `` (seed <s>)`` when it trained several seeds. Predictions are always on the case's
grid; images and ground truth come from the run's dataset (run.json's ``data``).

Everything is loaded lazily and cached (a few cases per run).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from npcrepro.errors import DataError, NpcreproError, ParameterError

__all__ = ["RunView", "CaseView", "Prediction", "list_runs", "default_run", "find_run",
           "prediction_labels", "CASE_COLUMNS", "ID_COLUMNS", "METRIC_COLUMNS"]

#: Columns that may name the case in a metrics.csv (first match wins).
CASE_COLUMNS = ("case",)
#: Columns that say which row is which (shown before the numbers when present).
ID_COLUMNS = ("method", "fold", "seed", "structure")
#: Metric columns shown by default, in this order (when present).
METRIC_COLUMNS = ("dice", "hd95", "assd", "nsd", "jaccard", "precision", "recall", "volume_pred_cm3",
                  "volume_ref_cm3")
#: Channels preferred as the default image, in order (after the run's own ``channel`` parameter and
#: the channels its run.json names, so a run trained on CECT opens on CECT). The phantom's CECT comes
#: after CT: where a run names no channel, the non-contrast CT is still preferred to it. Both CTs get
#: the same percentile display window as every channel (:meth:`CaseView.window`).
_CHANNEL_PREFERENCE = ("CET1", "T1", "T2", "CT", "CECT")


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


@dataclass(frozen=True)
class Prediction:
    """One prediction file: the case, its ``label``, the ``method``, the ``structure`` (file stem),
    the fold and seed it came from and its path."""

    case: str
    label: str
    method: str
    structure: str
    fold: int
    seed: int
    path: Path

    @property
    def stem(self) -> str:
        return self.structure


def prediction_labels(results) -> dict[str, dict[str, Prediction]]:
    """``{case: {label: Prediction}}`` of every prediction file of a run (``Results`` or its folder)."""
    if isinstance(results, (str, os.PathLike)):
        from npcrepro.engine.results import Results

        results = Results.open(results)
    many_structures = len(results.structures) > 1
    many_seeds = len(results.seeds) > 1
    out: dict[str, dict[str, Prediction]] = {}
    for k, fold in enumerate(results.splits()):
        for case in sorted(fold.test, key=_natural):
            for method in results.methods:
                for seed in results.seeds:
                    for structure in results.structures:
                        path = results.job_dir(method, k, seed) / "predictions" / case / f"{structure}.nii.gz"
                        if not path.exists():
                            continue
                        label = method + (f"/{structure}" if many_structures else "") + (
                            f" (seed {seed})" if many_seeds else "")
                        out.setdefault(case, {})[label] = Prediction(case, label, method, structure, k, seed,
                                                                     path)
    return out


# ------------------------------------------------------------------------------------- cases
@dataclass(eq=False)
class CaseView:
    """What the explorer shows of one case: geometry, channel names (images loaded on demand and
    cached), structure masks and where they came from."""

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: list[str]
    labels: dict[str, np.ndarray]
    source: str
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    images: dict[str, np.ndarray] = field(default_factory=dict)
    loader: Callable[[str], np.ndarray] | None = None
    default_channel: str | None = None
    default_structure: str | None = None
    _windows: dict = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        """A single-slice case (the plane choice does not apply)."""
        return self.shape[0] == 1

    @property
    def superior_up(self) -> bool:
        """Whether a growing z index points to the head (then coronal/sagittal views flip rows)."""
        return bool(np.asarray(self.direction, float)[0, 0] >= 0)

    def image(self, channel: str) -> np.ndarray:
        if channel not in self.channels:
            raise ParameterError(f"case {self.name}: no channel {channel!r} "
                                 f"(have: {', '.join(self.channels)})")
        if channel not in self.images:
            if self.loader is None:
                raise DataError(f"case {self.name}: channel {channel!r} cannot be loaded")
            self.images[channel] = np.asarray(self.loader(channel), np.float32)
        return self.images[channel]

    def window(self, channel: str) -> tuple[float, float]:
        """Display window of a channel over the whole volume (cached)."""
        if channel not in self._windows:
            from npcrepro.viz.render import intensity_window

            self._windows[channel] = intensity_window(self.image(channel))
        return self._windows[channel]


def _pick_channel(channels: Sequence[str], *prefer: str | None) -> str | None:
    for c in list(prefer) + list(_CHANNEL_PREFERENCE):
        if c and c in channels:
            return c
    return channels[0] if channels else None


def _case_from_dataset(ds, name: str, prefer: Sequence[str | None]) -> CaseView:
    first = _pick_channel(ds.channels, *prefer)
    case = ds.load(name, channels=[first] if first else None)

    def loader(ch: str, ds=ds, name=name):
        return ds.load(name, channels=[ch], structures=[]).images[ch]

    return CaseView(name, tuple(case.shape), tuple(case.spacing), list(ds.channels), dict(case.labels),
                    str(ds.root), case.direction, dict(case.images), loader, first)


# ------------------------------------------------------------------------------------- runs
class RunView:
    """One run folder as the explorer sees it (everything lazy and cached).

    Attributes: ``path``, ``results`` (:class:`~npcrepro.engine.results.Results`), ``params``
    (params.json), ``paper`` (the chapter), ``profile``, ``name`` (folder name), ``label``
    (``chapter/name``), ``out_dir`` (the root the run lives under).
    """

    def __init__(self, path: str | os.PathLike, *, max_cases: int = 4):
        from npcrepro.engine.results import Results

        self.path = Path(path)
        self.results = Results.open(self.path)
        self.params: dict[str, Any] = dict(self.results.params)
        self.paper = self.results.chapter or self.path.parent.name
        self.profile = str(self.results.profile or self.path.parent.parent.name)
        self.name = self.path.name
        self.label = f"{self.path.parent.name}/{self.name}"
        self.out_dir = self.path.parent.parent.parent
        self._max_cases = max_cases
        self._cases: OrderedDict[str, CaseView] = OrderedDict()
        self._preds: OrderedDict[tuple[str, str], tuple] = OrderedDict()

    def __repr__(self) -> str:
        return f"RunView({self.label!r}, {len(self.cases)} cases, labels={self.labels})"

    # ------------------------------------------------------------------ predictions
    @cached_property
    def predictions(self) -> dict[str, dict[str, Prediction]]:
        """``{case: {label: Prediction}}``."""
        return prediction_labels(self.results)

    @cached_property
    def labels(self) -> list[str]:
        """Every prediction label of the run (methods in the run's order; colours follow it)."""
        seen: dict[str, None] = {}
        for d in self.predictions.values():
            for lab in d:
                seen[lab] = None
        order = {m: i for i, m in enumerate(self.results.methods)}
        return sorted(seen, key=lambda lab: (order.get(lab.split("/")[0].split(" (")[0], 99), _natural(lab)))

    @property
    def has_predictions(self) -> bool:
        return bool(self.predictions)

    def labels_for(self, case: str) -> list[str]:
        have = self.predictions.get(case, {})
        return [lab for lab in self.labels if lab in have]

    def colours(self) -> dict[str, str]:
        from npcrepro.viz.render import colours_for

        return colours_for(self.labels)

    # ------------------------------------------------------------------ cases
    @cached_property
    def cases(self) -> list[str]:
        """The run's test cases (every case that some fold predicted)."""
        try:
            return sorted(self.results.test_cases(), key=_natural)
        except DataError:
            return sorted(self.predictions, key=_natural)

    def default_case(self) -> str | None:
        """The first case with the most prediction labels (the first case when none has any)."""
        if not self.cases:
            return None
        return max(self.cases, key=lambda c: len(self.predictions.get(c, {})))

    def case(self, name: str) -> CaseView:
        """The case ``name`` (images, structures, geometry); DataError when it cannot be found."""
        if name in self._cases:
            self._cases.move_to_end(name)
            return self._cases[name]
        try:
            ds = self.results.dataset()
        except (NpcreproError, OSError) as exc:
            raise DataError(f"{self.label}: the run's data cannot be opened ({str(exc).splitlines()[0]})") from None
        if name not in ds.cases and name not in getattr(ds, "test_cases", []):
            raise DataError(f"{self.label}: case {name!r} is not in the run's data ({ds.root})")
        prefer = [self.params.get("channel"), *self.results.channels]
        cv = _case_from_dataset(ds, name, prefer)
        structures = [s for s in self.results.structures if s in cv.labels]
        cv.default_structure = structures[0] if structures else next(iter(cv.labels), None)
        self._cases[name] = cv
        while len(self._cases) > self._max_cases:
            self._cases.popitem(last=False)
        return cv

    # ------------------------------------------------------------------ prediction volumes
    def prediction(self, case: str, label: str) -> tuple[np.ndarray | None, list[int] | None, str]:
        """``(mask on the case grid or None, None, note)``: the note says why a file cannot be shown
        (then the mask is None). The middle item (predicted slices) is always None: every prediction
        covers the whole case grid."""
        key = (case, label)
        if key in self._preds:
            self._preds.move_to_end(key)
            return self._preds[key]
        try:
            pred = self.predictions[case][label]
        except KeyError:
            raise ParameterError(f"{self.label}: no prediction {label!r} for case {case!r} "
                                 f"(have: {', '.join(self.labels_for(case)) or 'none'})") from None
        from npcrepro import io

        cv = self.case(case)
        try:
            arr = np.asarray(io.read(pred.path).array)
        except (NpcreproError, OSError, RuntimeError) as exc:
            res = (None, None, f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        else:
            res = ((arr > 0, None, "") if arr.shape == tuple(cv.shape) else
                   (None, None, f"shape {tuple(arr.shape)} is not the case grid {tuple(cv.shape)}"))
        self._preds[key] = res
        while len(self._preds) > 48:
            self._preds.popitem(last=False)
        return res

    def predicted_slices(self, case: str, labels: Iterable[str] | None = None) -> list[int] | None:
        """None: every prediction covers every slice of the case."""
        return None

    def best_axial_slice(self, case: str, structure: str | None, labels: Iterable[str] | None = None) -> int:
        """The axial slice with the largest ``structure`` area (the middle slice without one)."""
        from npcrepro.viz.render import best_slice

        cv = self.case(case)
        gt = cv.labels.get(structure) if structure else None
        return best_slice(gt, "axial") if gt is not None else cv.shape[0] // 2

    # ------------------------------------------------------------------ metrics
    @cached_property
    def metrics(self):
        """The run's per-case table (pandas DataFrame) or None when it has none."""
        m = self.results.metrics
        return None if m is None or m.empty else m

    @cached_property
    def case_column(self) -> str | None:
        m = self.metrics
        return "case" if m is not None and "case" in m.columns else None

    def metrics_for(self, case: str, *, columns: Sequence[str] | None = None,
                    structure: str | None = None):
        """The metrics rows of ``case``: the identifying columns (``ID_COLUMNS`` that vary), then
        ``columns`` (default the ``METRIC_COLUMNS`` present). With ``structure``, only that
        structure's rows when the run scores several. None when the run has no metrics; an empty
        frame when the case has no rows."""
        m = self.metrics
        if m is None or self.case_column is None:
            return None
        rows = m[m["case"].astype(str) == str(case)]
        if structure and "structure" in rows.columns:
            st = rows["structure"].astype(str)
            if st.nunique() > 1 and (st == structure).any():
                rows = rows[st == structure]
        ids = [c for c in ID_COLUMNS if c in rows.columns]
        ids = [c for c in ids if c == "method" or rows[c].nunique(dropna=False) > 1]
        if columns is None:
            columns = [c for c in METRIC_COLUMNS if c in rows.columns]
        return rows[ids + [c for c in columns if c in rows.columns and c not in ids]].reset_index(drop=True)

    def score_for(self, case: str, label: str, metric: str = "dice") -> float | None:
        """``metric`` of prediction ``label`` of ``case`` (None when it was not scored)."""
        pred = self.predictions.get(case, {}).get(label)
        m = self.metrics
        if pred is None or m is None or metric not in m.columns:
            return None
        sel = m[(m["case"].astype(str) == case) & (m["method"].astype(str) == pred.method)]
        for col, value in (("structure", pred.structure), ("seed", pred.seed)):
            if col in sel.columns:
                sel = sel[sel[col] == value]
        vals = pd_unique(sel[metric])
        return float(vals[0]) if len(vals) == 1 else None

    # ------------------------------------------------------------------ words
    def notes(self) -> list[str]:
        """One-line facts about the run (no predictions ...)."""
        if not self.has_predictions:
            return ["no predictions in this run: images and ground truth only"]
        return []


def pd_unique(values) -> list:
    out = []
    for v in values:
        if v == v and v not in out:  # drops NaN
            out.append(v)
    return out


def list_runs(out_dir: str | os.PathLike = "runs", profile: str | None = "cpu",
              paper: str | None = None) -> list[RunView]:
    """Every run folder under ``out_dir`` (optionally one profile/paper), oldest first, but a failed
    one (FAILED, or RUNNING with its process gone: :attr:`npcrepro.engine.runs.RunFolder.status`).

    DataError (one line) when the folder is missing or holds no run."""
    base = Path(out_dir)
    where = base / (profile or "*") / (paper or "*")
    if not base.is_dir():
        raise DataError(f"{base}: no such folder (no runs yet: run a chapter first, e.g. "
                        f"`python -m npcrepro run leaderboard --profile {profile or 'cpu'}`)")
    paths = sorted(p.parent for p in base.glob(f"{profile or '*'}/{paper or '*'}/*/run.json"))
    if not paths:
        raise DataError(f"no runs under {where} (run a chapter first, e.g. "
                        f"`python -m npcrepro run leaderboard --profile {profile or 'cpu'}`)")
    from npcrepro.engine.runs import RunFolder

    views = []
    for p in sorted(paths, key=lambda p: (p.name, p.parent.name)):
        if RunFolder(p).status == "failed":  # stopped by an error or killed: nothing to explore
            continue
        try:
            views.append(RunView(p))
        except DataError:
            continue
    if not views:
        raise DataError(f"no readable runs under {where}")
    return views


def _matches(view: RunView, prefer: Mapping[str, Any] | None) -> bool:
    return all(view.params.get(k) == v for k, v in (prefer or {}).items())


def default_run(views: Sequence[RunView], prefer: Mapping[str, Any] | None = None) -> RunView:
    """The newest leaderboard run, else the newest run with predictions, else the newest run; runs
    whose parameters match ``prefer`` (e.g. ``{"data": "phantom", "seed": 0}``) go first."""
    if not views:
        raise DataError("no runs to choose from")
    pools = [v for v in views if _matches(v, prefer)] or list(views), list(views)
    for pool in pools:
        for test in (lambda v: v.path.parent.name == "leaderboard" and v.has_predictions,
                     lambda v: v.has_predictions):
            hits = [v for v in pool if test(v)]
            if hits:
                return hits[-1]
    return pools[0][-1]


def find_run(views: Sequence[RunView], key: str | os.PathLike) -> RunView:
    """A run by label (``paper/stamp-name``), folder name, path, or paper (its newest run);
    ParameterError naming the valid labels otherwise."""
    k = str(key).rstrip("/")
    for v in reversed(views):
        if k in (v.label, v.name, str(v.path)):
            return v
    try:
        kp = Path(k).resolve()
        for v in reversed(views):
            if v.path.resolve() == kp:
                return v
    except OSError:
        pass
    same_paper = [v for v in views if v.path.parent.name == k or v.paper == k]
    if same_paper:
        return same_paper[-1]
    labels = [v.label for v in views]
    shown = ", ".join(labels[-8:]) + (f" and {len(labels) - 8} more" if len(labels) > 8 else "")
    raise ParameterError(f"unknown run {k!r} (valid: {shown}, or a paper name)")
