"""Run discovery for the explorer: which runs exist, which cases and predictions each one holds, the
images and ground truth behind them, and the per-case metrics.

A run folder is ``<out_dir>/<profile>/<paper>/<stamp>-<name>/`` (see :mod:`npcrepro.engine.runs`).
Discovery is generic:

* **Predictions** are every ``**/predictions/<case>/<file>.nii.gz`` under the run (root, sub-runs such
  as ``working/`` or ``xue2020_deeplabv3plus/``, folds ``fold_<k>/``). A prediction's *label* is its
  path relative to the run without ``fold_*``, ``predictions`` and the case folder, e.g.
  ``fold_0/predictions/npc_003/CSCN.nii.gz`` -> ``CSCN``, ``unet2d/predictions/npc_003/GTVp.nii.gz``
  -> ``unet2d/GTVp``. When every label ends in the same file stem (the structure, e.g. ``GTVp``) and
  has something before it, the stem is dropped (``unet2d``). Two folds predicting the same case under
  the same label get ``" (fold_<k>)"`` appended.
* **Images and ground truth** come from reopening the run's data: ``load_data(Params(params))`` with
  ``out_dir`` taken from the run's own location (the phantom is cached there), then datasets stored in
  the run (``data/*/``), then converted real data under ``<out_dir>/_data/`` and ``<out_dir>/_cache/``.
  Chapter hooks cover what the generic path cannot: li2018's phantom patients are rendered on the
  paper's DCE grid (``phantom_<seed>``) and its 2D slice stacks are put back on the slices they came
  from; xue2020's target (GTVp plus retropharyngeal nodes) is derived as an extra structure.
* **Metrics** are ``metrics.csv`` at the run root plus those of non-fold sub-runs (with a ``part``
  column; rows repeated at the root are kept once), else the folds' files.

Everything is loaded lazily and cached (a few cases per run).
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict, Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from npcrepro.errors import DataError, NpcreproError, ParameterError

__all__ = ["RunView", "CaseView", "Prediction", "list_runs", "default_run", "find_run",
           "prediction_labels", "CASE_COLUMNS", "ID_COLUMNS", "METRIC_COLUMNS"]

_FOLD = re.compile(r"^fold_\d+$")
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
#: Columns that may name the case in a metrics.csv (first match wins).
CASE_COLUMNS = ("case", "patient", "name", "subject")
#: Columns that say which row is which (shown before the numbers when present).
ID_COLUMNS = ("part", "fold", "track", "method", "key", "label", "model", "row", "mode", "structure")
#: Metric columns shown by default, in this order (when present).
METRIC_COLUMNS = ("dice", "hd95", "assd", "nsd", "jaccard", "precision", "recall", "volume_pred_cm3",
                  "volume_ref_cm3")
#: Channels preferred as the default image, in order (after the run's own ``channel`` parameter).
_CHANNEL_PREFERENCE = ("CET1", "T1", "T2", "CT")


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _stem(name: str) -> str | None:
    for suf in _SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


@dataclass(frozen=True)
class Prediction:
    """One prediction file: ``label`` (see the module docstring), the file ``stem`` (a structure or a
    method name), the fold it came from (or None) and its path."""

    case: str
    label: str
    stem: str
    fold: str | None
    path: Path


def prediction_labels(root: str | os.PathLike) -> dict[str, dict[str, Prediction]]:
    """``{case: {label: Prediction}}`` of every prediction file under the run folder ``root``."""
    root = Path(root)
    raw = []
    for p in root.glob("**/predictions/*/*"):
        stem = _stem(p.name)
        if stem is None or not p.is_file():
            continue
        parts = p.relative_to(root).parts
        if len(parts) < 3 or parts[-3] != "predictions":
            continue
        prefix = parts[:-3]
        folds = [x for x in prefix if _FOLD.match(x)]
        keep = tuple(x for x in prefix if not _FOLD.match(x))
        raw.append((parts[-2], keep + (stem,), folds[-1] if folds else None, stem, p))
    if not raw:
        return {}
    tuples = {t for _, t, _, _, _ in raw}
    if all(len(t) >= 2 for t in tuples) and len({t[-1] for t in tuples}) == 1:
        tuples_map = {t: "/".join(t[:-1]) for t in tuples}
    else:
        tuples_map = {t: "/".join(t) for t in tuples}
    count = Counter((case, tuples_map[t]) for case, t, _, _, _ in raw)
    out: dict[str, dict[str, Prediction]] = {}
    for case, t, fold, stem, p in sorted(raw, key=lambda r: (_natural(r[0]), str(r[4]))):
        label = tuples_map[t]
        if count[(case, label)] > 1:
            label = f"{label} ({fold or 'root'})"
        out.setdefault(case, {})[label] = Prediction(case, label, stem, fold, p)
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


def _case_from_memory(case, source: str, prefer: Sequence[str | None]) -> CaseView:
    chans = list(case.images)
    return CaseView(case.name, tuple(case.shape), tuple(case.spacing), chans, dict(case.labels), source,
                    case.direction, dict(case.images), None, _pick_channel(chans, *prefer))


# ------------------------------------------------------------------------------------- chapter hooks
class _Hook:
    """Chapter-specific knowledge; the default does nothing."""

    def use_primary(self, run: "RunView") -> bool:
        return True

    def load_case(self, run: "RunView", name: str) -> CaseView | None:
        return None

    def prefer_channels(self, run: "RunView") -> list[str]:
        return []

    def extra_labels(self, run: "RunView", cv: CaseView) -> str | None:
        """Add derived structures to ``cv.labels``; return the one to show by default (or None)."""
        return None

    def fit(self, run: "RunView", cv: CaseView, arr: np.ndarray, pred: Prediction):
        """(mask on the case grid, z slices that were predicted or None for all, note) or None."""
        return None

    def metric_names(self, run: "RunView", label: str) -> set[str]:
        """Other names the metrics table may use for prediction ``label``."""
        return set()


class _Li2018(_Hook):
    """li2018 predicts 2D slice stacks: the phantom patients (``phantom_<seed>``) are rendered on the
    paper's 144 x 144 x 20 DCE grid and the stack's slices are the patient's tumour slices chosen by
    the pipeline's rule; the real T2 slices were resized from 512 to 144 pixels."""

    _PHANTOM = re.compile(r"^phantom_(\d+)$")

    def use_primary(self, run):
        return run.params.get("data") != "phantom"

    def load_case(self, run, name):
        m = self._PHANTOM.match(name)
        if run.params.get("data") != "phantom" or not m:
            return None
        from npcrepro import phantom
        from npcrepro.pipelines import li2018

        case = phantom.make_case(int(m.group(1)), **li2018.phantom_params())
        return _case_from_memory(case, "li2018 phantom (DCE grid)", [li2018.DCE_CHANNEL])

    def prefer_channels(self, run):
        from npcrepro.pipelines import li2018

        return [li2018.DCE_CHANNEL]

    def fit(self, run, cv, arr, pred):
        from npcrepro import transforms as T
        from npcrepro.pipelines import li2018

        shape = cv.shape
        if arr.shape[1:] == shape[1:] and arr.shape[0] < shape[0]:
            gt = cv.labels.get(li2018.STRUCTURE)
            if gt is None:
                return None
            zs = li2018._choose_slices(T.slices_with(gt, axis=0), arr.shape[0])
            if len(zs) != arr.shape[0]:
                return None
            out = np.zeros(shape, bool)
            out[zs] = arr.astype(bool)
            zl = ", ".join(str(int(z)) for z in zs)
            return out, [int(z) for z in zs], f"predicted on {len(zs)} tumour slice(s) only (axial {zl})"
        if arr.shape[0] == shape[0] and arr.shape[1:] != shape[1:]:
            # nearest neighbour: pixel centres of the case grid looked up in the prediction's grid
            rows = ((np.arange(shape[1]) + 0.5) * arr.shape[1] / shape[1]).astype(int).clip(0, arr.shape[1] - 1)
            cols = ((np.arange(shape[2]) + 0.5) * arr.shape[2] / shape[2]).astype(int).clip(0, arr.shape[2] - 1)
            out = arr.astype(bool)[:, rows][:, :, cols]
            return out, None, (f"predicted at {arr.shape[1]}x{arr.shape[2]} px, shown resized to "
                               f"{shape[1]}x{shape[2]}")
        return None


class _Xue2020(_Hook):
    """xue2020's target is derived (GTVp plus retropharyngeal nodes by default, PTV70 on OpenKBP)."""

    def prefer_channels(self, run):
        return ["CT"]

    def metric_names(self, run, label):
        from npcrepro.pipelines import xue2020

        return {m for m, sub in xue2020.MODELS.items() if sub == label.split("/")[0]}

    def extra_labels(self, run, cv):
        rule = run.params.get("rule") or run.params.get("target")
        if not rule or rule == "gtvp":
            return None
        try:
            from npcrepro.datasets import Case
            from npcrepro.pipelines import xue2020

            case = Case(cv.name, {}, dict(cv.labels), cv.spacing, direction=cv.direction)
            mask, _ = xue2020.derive_target(case, rule)
        except (NpcreproError, KeyError, ValueError):
            return None
        name = f"target ({rule})"
        cv.labels[name] = np.asarray(mask, bool)
        return name


_HOOKS: dict[str, _Hook] = {"li2018": _Li2018(), "xue2020": _Xue2020()}


# ------------------------------------------------------------------------------------- runs
class RunView:
    """One run folder as the explorer sees it (everything lazy and cached).

    Attributes: ``path``, ``params`` (params.json), ``paper``, ``profile``, ``name`` (folder name),
    ``label`` (``paper/name``), ``out_dir`` (the root the run lives under).
    """

    def __init__(self, path: str | os.PathLike, *, max_cases: int = 4):
        self.path = Path(path)
        pj = self.path / "params.json"
        if not pj.exists():
            raise DataError(f"{self.path}: not a run folder (no params.json)")
        try:
            self.params: dict[str, Any] = json.loads(pj.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{pj}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        self.paper = str(self.params.get("paper") or self.path.parent.name)
        self.profile = str(self.params.get("profile") or self.path.parent.parent.name)
        self.name = self.path.name
        self.label = f"{self.path.parent.name}/{self.name}"
        self.out_dir = self.path.parent.parent.parent
        self._hook = _HOOKS.get(self.path.parent.name) or _HOOKS.get(self.paper) or _Hook()
        self._max_cases = max_cases
        self._cases: OrderedDict[str, CaseView] = OrderedDict()
        self._preds: OrderedDict[tuple[str, str], tuple] = OrderedDict()
        self._primary_ds = None
        self._primary_error: str | None = None
        self._extra_ds: list | None = None

    def __repr__(self) -> str:
        return f"RunView({self.label!r}, {len(self.cases)} cases, labels={self.labels})"

    # ------------------------------------------------------------------ predictions
    @cached_property
    def predictions(self) -> dict[str, dict[str, Prediction]]:
        """``{case: {label: Prediction}}``."""
        return prediction_labels(self.path)

    @cached_property
    def labels(self) -> list[str]:
        """Every prediction label of the run, sorted (colours follow this order)."""
        return sorted({lab for d in self.predictions.values() for lab in d}, key=_natural)

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
        """Cases with predictions; without any, the cases of metrics.csv; else the dataset's."""
        if self.predictions:
            return sorted(self.predictions, key=_natural)
        m = self.metrics
        col = self.case_column
        if m is not None and col is not None:
            return list(dict.fromkeys(m[col].astype(str)))
        ds = self._primary()
        if ds is not None:
            return list(ds.cases) + list(ds.test_cases)
        return []

    def default_case(self) -> str | None:
        """The first case with the most prediction labels (the first case when none has any)."""
        if not self.cases:
            return None
        return max(self.cases, key=lambda c: len(self.predictions.get(c, {})))

    def _primary(self):
        if self._primary_ds is not None or self._primary_error is not None:
            return self._primary_ds
        if "data" not in self.params or not self._hook.use_primary(self):
            self._primary_error = "no data parameter"
            return None
        from npcrepro.profiles import Params, load_data

        params = dict(self.params, out_dir=str(self.out_dir))
        data = str(params["data"])
        if data != "phantom":
            params["data"] = str(self._locate_data(data))
        try:
            self._primary_ds = load_data(Params(params))
        except (NpcreproError, OSError) as exc:
            self._primary_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self._primary_ds

    def _locate_data(self, data: str) -> Path:
        """A dataset path from params.json, found again: as written (absolute or relative to the
        working directory), relative to the folder holding the runs' root (where the chapter ran), under
        the run's own out_dir when it started with the out_dir the run was made with, by its folder name
        under ``<out_dir>/_cache`` or ``_data``, or relative to the repository."""
        from npcrepro.paths import repo_root

        p = Path(data)
        cands = [p]
        if not p.is_absolute():
            cands.append(self.out_dir.parent / p)
            old = Path(str(self.params.get("out_dir") or ""))
            try:
                cands.append(self.out_dir / p.relative_to(old))
            except ValueError:
                pass
        cands += [self.out_dir / "_cache" / p.name, self.out_dir / "_data" / p.name, repo_root() / p]
        for c in cands:
            if (c / "dataset.json").exists():
                return c
        return p

    def _extras(self) -> list:
        if self._extra_ds is None:
            from npcrepro.datasets import open_dataset

            found: list[Path] = []
            for pattern in ("data/*/dataset.json", "*/data/*/dataset.json"):
                found += sorted(self.path.glob(pattern))
            for sub in ("_data", "_cache"):
                found += sorted(p for p in (self.out_dir / sub).glob("*/dataset.json")
                                if not p.parent.name.startswith(("phantom-", ".")))
            self._extra_ds = []
            for p in found:
                try:
                    self._extra_ds.append(open_dataset(p.parent))
                except NpcreproError:
                    continue
        return self._extra_ds

    @staticmethod
    def _has(ds, name: str) -> bool:
        return name in ds.cases or name in ds.test_cases

    def case(self, name: str) -> CaseView:
        """The case ``name`` (images, structures, geometry); DataError when it cannot be found."""
        if name in self._cases:
            self._cases.move_to_end(name)
            return self._cases[name]
        prefer = [self.params.get("channel"), *self._hook.prefer_channels(self)]
        cv = self._hook.load_case(self, name)
        if cv is None:
            ds = self._primary()
            if ds is not None and self._has(ds, name):
                cv = _case_from_dataset(ds, name, prefer)
        if cv is None:
            for ds in self._extras():
                if self._has(ds, name):
                    cv = _case_from_dataset(ds, name, prefer)
                    break
        if cv is None:
            err = self._primary_error
            why = f" ({err})" if err and err != "no data parameter" else ""
            raise DataError(f"{self.label}: case {name!r} is not in the run's data{why}")
        cv.default_structure = self._hook.extra_labels(self, cv) or self._default_structure(cv)
        self._cases[name] = cv
        while len(self._cases) > self._max_cases:
            self._cases.popitem(last=False)
        return cv

    def _default_structure(self, cv: CaseView) -> str | None:
        stems = Counter(p.stem for p in self.predictions.get(cv.name, {}).values() if p.stem in cv.labels)
        if stems:
            return stems.most_common(1)[0][0]
        cands = [self.params.get("structure")]
        try:
            summary = json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
            cands.append(summary.get("structure") if isinstance(summary, dict) else None)
        except (OSError, json.JSONDecodeError):
            pass
        for s in cands + ["GTVp"]:
            if isinstance(s, str) and s in cv.labels:
                return s
        return next(iter(cv.labels), None)

    # ------------------------------------------------------------------ prediction volumes
    def prediction(self, case: str, label: str) -> tuple[np.ndarray | None, list[int] | None, str]:
        """``(mask on the case grid or None, predicted axial slices or None for all, note)``.

        The note is empty for a prediction on the case's own grid; otherwise it says how the file was
        mapped (li2018's slice stacks) or why it cannot be shown (mask None)."""
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
            if arr.ndim == 2:
                arr = arr[None]
            if arr.shape == tuple(cv.shape):
                res = (arr > 0, None, "")
            else:
                fitted = self._hook.fit(self, cv, arr > 0, pred) if arr.ndim == 3 else None
                if fitted is None:
                    res = (None, None, f"shape {tuple(arr.shape)} is not the case grid {tuple(cv.shape)}")
                else:
                    res = fitted
        self._preds[key] = res
        while len(self._preds) > 48:
            self._preds.popitem(last=False)
        return res

    def predicted_slices(self, case: str, labels: Iterable[str] | None = None) -> list[int] | None:
        """The axial slices that ``labels`` (default all) of ``case`` predicted when some prediction
        covers only some slices (li2018's stacks), else None (every slice)."""
        zs: set[int] = set()
        partial = False
        for lab in (self.labels_for(case) if labels is None else labels):
            mask, z, _ = self.prediction(case, lab)
            if mask is not None and z is not None:
                partial = True
                zs.update(z)
        return sorted(zs) if partial else None

    def best_axial_slice(self, case: str, structure: str | None, labels: Iterable[str] | None = None) -> int:
        """The axial slice with the largest ``structure`` area, among the predicted slices when the
        predictions cover only some (the middle slice without a structure)."""
        from npcrepro.viz.render import best_slice

        cv = self.case(case)
        gt = cv.labels.get(structure) if structure else None
        zs = self.predicted_slices(case, labels)
        if not zs:
            return best_slice(gt, "axial") if gt is not None else cv.shape[0] // 2
        if gt is None:
            return zs[0]
        area = np.asarray(gt, bool).sum(axis=(1, 2))
        return int(max(zs, key=lambda z: area[z]))

    # ------------------------------------------------------------------ metrics
    @cached_property
    def metrics(self):
        """The run's per-case table (pandas DataFrame) or None when it has no metrics.csv."""
        import pandas as pd

        def read(p: Path):
            try:
                return pd.read_csv(p)
            except (OSError, ValueError):
                return None

        root = self.path / "metrics.csv"
        subs = sorted(p for p in self.path.glob("*/metrics.csv")
                      if not _FOLD.match(p.parent.name) and p.parent.name not in ("data", "predictions"))
        frames = []
        if root.exists():
            df = read(root)
            if df is not None:
                frames.append(("", df))
        for p in subs:
            df = read(p)
            if df is not None:
                frames.append((p.parent.name, df))
        if not frames:
            for p in sorted(self.path.glob("fold_*/metrics.csv")):
                df = read(p)
                if df is not None:
                    frames.append(("", df))
        if not frames:
            return None
        if len(frames) == 1 or all(part == "" for part, _ in frames):
            table = pd.concat([df for _, df in frames], ignore_index=True)
            return table.drop_duplicates(ignore_index=True)
        table = pd.concat([df.assign(part=part) for part, df in frames], ignore_index=True)
        cols = [c for c in table.columns if c != "part"]
        table = table.drop_duplicates(subset=cols, keep="last", ignore_index=True)
        if (table["part"] == "").all():
            table = table.drop(columns="part")
        else:
            table = table[["part"] + cols]
        return table

    @cached_property
    def case_column(self) -> str | None:
        m = self.metrics
        if m is None:
            return None
        return next((c for c in CASE_COLUMNS if c in m.columns), None)

    def metrics_for(self, case: str, *, columns: Sequence[str] | None = None,
                    structure: str | None = None):
        """The metrics.csv rows of ``case``: the identifying columns (``ID_COLUMNS`` present), then
        ``columns`` (default the ``METRIC_COLUMNS`` present, else every numeric column). With
        ``structure``, only that structure's rows when the table scores several structures of the case
        and that one among them. None when the run has no metrics or no case column; an empty frame
        when the case has no rows."""
        m, col = self.metrics, self.case_column
        if m is None or col is None:
            return None
        rows = m[m[col].astype(str) == str(case)]
        if structure and "structure" in rows.columns:
            st = rows["structure"].astype(str)
            if st.nunique() > 1 and (st == structure).any():
                rows = rows[st == structure]
        ids = [c for c in ID_COLUMNS if c in rows.columns]
        ids = [c for c in ids if not (c == "fold" and rows[c].nunique(dropna=False) <= 1)]
        if columns is None:
            columns = [c for c in METRIC_COLUMNS if c in rows.columns]
            if not columns:
                columns = [c for c in rows.select_dtypes("number").columns if c not in ids][:8]
        return rows[ids + [c for c in columns if c in rows.columns and c not in ids]].reset_index(drop=True)

    def score_for(self, case: str, label: str, metric: str = "dice") -> float | None:
        """``metric`` of the metrics row that belongs to prediction ``label`` of ``case``: the one row
        whose identifying columns name the label (or a part of it), or the case's only row. None when
        that is ambiguous or absent."""
        rows = self.metrics_for(case, columns=[metric])
        if rows is None or metric not in rows.columns or rows.empty:
            return None
        pred = self.predictions.get(case, {}).get(label)
        names = {label, *label.split("/"), *self._hook.metric_names(self, label)}
        if pred is not None:
            names.add(pred.stem)
        hit = rows
        for c in [c for c in ("part", "method", "key", "label", "model", "row", "mode") if c in rows.columns]:
            sel = rows[rows[c].astype(str).isin(names)]
            if not sel.empty:
                hit = sel
                break
        else:
            if len(self.labels_for(case)) > 1:
                return None
        if "structure" in hit.columns and pred is not None and (hit["structure"] == pred.stem).any():
            hit = hit[hit["structure"] == pred.stem]
        vals = hit[metric].dropna().unique()
        if len(vals) != 1:
            return None
        try:
            return float(vals[0])
        except (TypeError, ValueError):
            return None

    # ------------------------------------------------------------------ words
    def notes(self) -> list[str]:
        """One-line facts about the run (no predictions, predictions not on the case grid ...)."""
        if not self.has_predictions:
            return ["no predictions in this run: images and ground truth only"]
        return []


def list_runs(out_dir: str | os.PathLike = "runs", profile: str | None = "cpu",
              paper: str | None = None) -> list[RunView]:
    """Every run folder under ``out_dir`` (optionally one profile/paper), oldest first.

    DataError (one line) when the folder is missing or holds no run."""
    from npcrepro.engine.runs import find_runs

    base = Path(out_dir)
    where = base / (profile or "*") / (paper or "*")
    if not base.is_dir():
        raise DataError(f"{base}: no such folder (no runs yet: run a chapter first, e.g. "
                        f"`python -m npcrepro run leaderboard --profile {profile or 'cpu'}`)")
    paths = find_runs(base, profile, paper)
    if not paths:
        raise DataError(f"no runs under {where} (run a chapter first, e.g. "
                        f"`python -m npcrepro run leaderboard --profile {profile or 'cpu'}`)")
    views = []
    for p in sorted(paths, key=lambda p: (p.name, p.parent.name)):
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
