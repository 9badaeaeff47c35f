"""Read any run folder the experiment runner wrote: one class for chapters, leaderboard, explorer,
intro and appendix.

>>> res = Results.open("runs/cpu/chen2020/20261123-101500-cv")
>>> res.metrics                      # method, fold, seed, case, structure, dice, hd95, ...
>>> res.methods, res.folds, res.seeds
>>> mask = res.prediction("mmfnet_full", "npc_003")          # (z, y, x) bool on the case grid
>>> case = res.load_case("npc_003")                         # images and reference masks

The layout is described in :mod:`npcrepro.engine.experiment`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from npcrepro.engine.runs import job_dir
from npcrepro.errors import DataError

__all__ = ["Results", "find_results", "COLLAPSE_DROP", "VOLUME_FACTOR", "ADDED_ROWS", "half_record",
           "record_added_rows"]

#: A network whose mean DSC moves by at most this over the second half of its budget has converged.
CONVERGENCE_TOLERANCE = 0.03
#: A network whose full-budget DSC falls more than this below its half-budget DSC has collapsed.
COLLAPSE_DROP = 0.03
#: A predicted volume more than this many times the reference (or less than its inverse) is off.
VOLUME_FACTOR = 3.0
#: Rows scored from prediction folders after the runner finished (the leaderboard's nnU-Net and external
#: rows: :func:`npcrepro.chapters.leaderboard.external.add_rows`): ``{record: [method entries]}``, each
#: record a csv of per-case rows in the run folder (its half-budget rows in :func:`half_record`), each
#: entry as run.json lists a method (name, label, info) with its ``record``. :meth:`Results.open` adds
#: them, so every reader of the run (the quality bars, the convergence and collapse flags, the pages that
#: read the leaderboard) sees the rows its page showed; the runner's own files stay as it wrote them.
ADDED_ROWS = "added_rows.json"


def half_record(record: str) -> str:
    """Where the half-budget rows of ``record`` go: ``<stem>_half.csv`` beside it."""
    r = Path(record)
    return str(r.with_name(f"{r.stem}_half.csv"))


def _read_added_rows(path: Path) -> dict:
    f = Path(path) / ADDED_ROWS
    if not f.exists():
        return {}
    try:
        added = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{f}: unreadable ({exc})") from None
    if not isinstance(added, dict) or not all(isinstance(v, list) for v in added.values()):
        raise DataError(f"{f}: not a record of added rows ({{record csv: [methods]}})")
    return added


def record_added_rows(path: str | os.PathLike, record: str, entries: list[dict]) -> None:
    """Set the methods of ``record`` in the run folder's :data:`ADDED_ROWS` to ``entries`` (none: the
    record is dropped, its csv kept). Nothing is written when nothing changes."""
    from npcrepro.paths import write_atomically

    added = _read_added_rows(Path(path))
    before = dict(added)
    if entries:
        added[record] = list(entries)
    else:
        added.pop(record, None)
    if added != before:
        write_atomically(Path(path) / ADDED_ROWS, lambda tmp: tmp.write_text(json.dumps(added, indent=1),
                                                                           encoding="utf-8"), overwrite=True)


@dataclass
class Results:
    """A run folder's contents.

    ``metrics`` has one row per (method, fold, seed, case, structure); ``training`` one row per
    (method, fold, seed) with the chapter's training facts; ``info`` is run.json (chapter, methods
    with labels and facts, folds, seeds, status, data); ``params`` is params.json.
    """

    path: Path
    info: dict
    params: dict
    metrics: Any = None
    training: Any = None
    metrics_half: Any = None
    _splits: list | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Results":
        """Read ``path`` (DataError when it is not a run folder of the runner)."""
        import pandas as pd

        p = Path(path)
        run_json = p / "run.json"
        if not run_json.exists():
            raise DataError(f"{p}: not a run folder of the experiment runner (no run.json)")
        try:
            info = json.loads(run_json.read_text(encoding="utf-8"))
            params = json.loads((p / "params.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: unreadable run folder ({exc})") from None

        def table(name: str):
            f = p / name
            if not f.exists() or f.stat().st_size == 0:
                return pd.DataFrame()
            try:
                return pd.read_csv(f)
            except pd.errors.EmptyDataError:
                return pd.DataFrame()

        res = cls(p, info, params, table("metrics.csv"), table("training.csv"), table("metrics_half.csv"))
        return res._with_added_rows(table)

    def _with_added_rows(self, table) -> "Results":
        """This run with the rows of :data:`ADDED_ROWS` whose csv is there (a name the run already has is
        not added twice)."""
        import warnings

        import pandas as pd

        try:
            added = _read_added_rows(self.path)
        except DataError as exc:  # the run's own results stay readable
            warnings.warn(f"{exc}: the run is read without its added rows", stacklevel=3)
            return self
        if not added:
            return self
        methods = list(self.info.get("methods", []))
        have = {m.get("name") for m in methods}
        full, half = [self.metrics], [self.metrics_half]
        for record, entries in added.items():
            new = [dict(e, record=record) for e in entries if isinstance(e, dict) and e.get("name") not in have]
            names = {e["name"] for e in new}
            rows, rows_half = table(record), table(half_record(record))
            if not names or not len(rows) or "method" not in rows:
                continue
            full.append(rows[rows["method"].isin(names)])
            if len(rows_half) and "method" in rows_half:
                half.append(rows_half[rows_half["method"].isin(names)])
            methods += new
            have |= names

        def joined(frames):
            frames = [f for f in frames if f is not None and len(f)]
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

        self.info = {**self.info, "methods": methods}
        self.metrics, self.metrics_half = joined(full), joined(half)
        return self

    # ------------------------------------------------------------------ facts
    @property
    def where(self) -> str:
        """The run folder as a page shows it (``runs/cpu/<chapter>/<stamp>-<name>``, not the building
        machine's path: :func:`npcrepro.paths.shown`)."""
        from npcrepro.paths import shown

        return shown(self.path)

    @property
    def environment(self) -> dict:
        """``environment.json``: what the run ran on (versions, device, ``git``: revision and whether the
        tree was modified); {} where it is missing or unreadable."""
        try:
            env = json.loads((Path(self.path) / "environment.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return env if isinstance(env, dict) else {}

    @property
    def on_phantom(self) -> bool:
        """Whether the run read the digital phantom (its ``data`` parameter), not a dataset folder."""
        return self.params.get("data") == "phantom"

    @property
    def phantom_version(self) -> int | None:
        """The phantom generator version (:data:`npcrepro.phantom.GENERATOR_VERSION`) of the cohort the
        run read: as run.json records it, else (runs made before it was recorded) as the source of
        the commit its environment.json names sets it, where git can show that commit; None on real
        data or where neither tells."""
        if not self.on_phantom:
            return None
        recorded = (self.info.get("phantom") or {}).get("generator_version")
        if recorded is not None:
            return int(recorded)
        from npcrepro.engine.runs import generator_version_at

        return generator_version_at((self.environment.get("git") or {}).get("revision") or "")

    @property
    def raters(self):
        """``raters.csv``: the raters' agreement on this run's test cases
        (:func:`npcrepro.evaluation.rater_agreement`); an empty frame where the data has no raters."""
        import pandas as pd

        from npcrepro.evaluation import RATER_COLUMNS

        f = Path(self.path) / "raters.csv" if self.path is not None else None
        try:
            return pd.read_csv(f, dtype={"case": str}) if f is not None and f.exists() and f.stat().st_size \
                else pd.DataFrame(columns=RATER_COLUMNS)
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=RATER_COLUMNS)

    def ceiling(self, structure: str = "GTVp") -> float | None:
        """The raters' mean pairwise DSC of ``structure`` over this run's test cases (None without raters)."""
        r = self.raters
        r = r[r["structure"] == structure]
        return float(r["pairwise_dice"].mean()) if len(r) else None

    @property
    def chapter(self) -> str:
        return self.info.get("chapter", "")

    @property
    def status(self) -> str:
        return self.info.get("status", "")

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def profile(self) -> str:
        return self.params.get("profile", "")

    @property
    def data(self) -> str:
        """The dataset folder the run read."""
        return self.info.get("data") or self.params.get("data", "")

    @property
    def data_label(self) -> str:
        """How tables name the data ("phantom", a dataset folder, "OpenKBP CT (12 patients)" ...)."""
        return self.info.get("data_label") or self.data

    @property
    def cohort(self) -> str | None:
        """The phantom cohort the run read ("development" or "evaluation",
        :data:`npcrepro.profiles.COHORTS`); runs from before cohorts read the development patients
        (``npc_000``...). On real data "evaluation" where the run tested on the dataset's own
        held-out cases (``imagesTs``, :meth:`npcrepro.engine.Chapter.split`), else None."""
        if not self.on_phantom:
            return "evaluation" if self.held_out else None
        return str(self.params.get("cohort") or "development")

    @property
    def held_out(self) -> int:
        """How many of the dataset's own held-out cases (``imagesTs``) the run tested on (0: none)."""
        return int(self.info.get("held_out") or 0)

    @property
    def source(self) -> str:
        """:attr:`data_label` and its cohort: "phantom, evaluation cohort"; on real data the held-out
        test cases where the run tested on them."""
        if self.held_out:
            return f"{self.data_label}, {self.held_out} held-out test patients"
        return self.data_label + (f", {self.cohort} cohort" if self.cohort else "")

    @property
    def methods(self) -> list[str]:
        return [m["name"] for m in self.info.get("methods", [])]

    @property
    def added_rows(self) -> dict[str, str]:
        """The methods scored from prediction folders, not trained by this run: name -> its record
        (:data:`ADDED_ROWS`)."""
        return {m["name"]: m["record"] for m in self.info.get("methods", []) if m.get("record")}

    def label(self, method: str) -> str:
        for m in self.info.get("methods", []):
            if m["name"] == method:
                return m.get("label") or method
        return method

    def training_table(self, columns, *, labels: bool = False):
        """The training facts ``columns`` ({training.csv column: heading}, or a list of columns kept
        as they are) that the run recorded, one row per job, in that order; ``labels``: the methods
        by their labels (the ``method`` column)."""
        t = self.training
        if labels and len(t):
            t = t.assign(method=t["method"].map(self.label))
        names = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
        return t[[c for c in names if c in t]].rename(columns=names)

    def method_info(self, method: str) -> dict:
        for m in self.info.get("methods", []):
            if m["name"] == method:
                return dict(m.get("info") or {})
        raise DataError(f"{self.path}: no method {method!r} (have: {', '.join(self.methods)})")

    @property
    def folds(self) -> int:
        return int(self.info.get("folds", 0))

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.info.get("seeds", [])]

    @property
    def structures(self) -> list[str]:
        return list(self.info.get("structures", []))

    @property
    def channels(self) -> list[str]:
        return list(self.info.get("channels", []))

    def splits(self) -> list:
        """The folds (``npcrepro.datasets.splits.Fold``) the run used."""
        if self._splits is None:
            from npcrepro.datasets.splits import load_splits

            self._splits = load_splits(self.path / "splits.json")
        return self._splits

    def test_cases(self) -> list[str]:
        """Every case that was a test case in some fold, in natural order."""
        return sorted({c for f in self.splits() for c in f.test})

    def fold_of(self, case: str) -> int:
        for k, f in enumerate(self.splits()):
            if case in f.test:
                return k
        raise DataError(f"{self.path}: {case!r} is not a test case of this run")

    # ------------------------------------------------------------------ files
    def job_dir(self, method: str, fold: int, seed: int | None = None) -> Path:
        return job_dir(self.path, method, fold, self.seeds[0] if seed is None else seed)

    def prediction_path(self, method: str, case: str, structure: str | None = None,
                        seed: int | None = None) -> Path:
        structure = structure or (self.structures[0] if self.structures else "GTVp")
        return self.job_dir(method, self.fold_of(case), seed) / "predictions" / case / f"{structure}.nii.gz"

    def prediction(self, method: str, case: str, structure: str | None = None,
                   seed: int | None = None) -> np.ndarray | None:
        """The predicted mask (z, y, x) bool on the case's grid, or None when it was not written."""
        from npcrepro import io

        try:
            p = self.prediction_path(method, case, structure, seed)
        except DataError:
            return None
        return io.read(p).array.astype(bool) if p.exists() else None

    def curves(self, method: str, fold: int = 0, seed: int | None = None):
        """The training curves (curves.csv) of one job, or an empty frame."""
        import pandas as pd

        p = self.job_dir(method, fold, seed) / "curves.csv"
        return pd.read_csv(p) if p.exists() else pd.DataFrame()

    def dataset(self):
        from npcrepro.datasets import open_dataset

        return open_dataset(self.data)

    def load_case(self, case: str, channels=None, structures=None):
        """A case of the run's dataset (default: the run's channels and structures)."""
        return self.dataset().load(case, channels=channels or self.channels or None,
                                   structures=structures or self.structures or None)

    def convergence(self, metric: str = "dice", tolerance: float = CONVERGENCE_TOLERANCE, labels: bool = False):
        """Per method: mean ``metric`` of each seed and their spread (max - min; with several seeds),
        the mean with the weights at half the budget and at the full budget, their difference and
        ``converged`` (|difference| <= ``tolerance``; None when the half-budget weights were not
        scored, e.g. training stopped early before half its budget). A network whose mean is 0 at the
        full budget (it never found the structure) is not converged, however flat its curve. With
        several training stages, "half the budget" is the middle of the last stage (see
        :func:`npcrepro.engine.half_budget.save_half_budget`). Means are over test cases (and folds and
        seeds), of the scored rows (:func:`npcrepro.evaluation.scored`). ``labels``: the methods' labels
        instead of their names.

        ``difference low`` / ``difference high``: the 95 % bootstrap interval (BCa, over the test cases
        scored at both points, paired: same case, structure, fold and seed) of the mean difference, and
        ``reading`` what it allows: "converged" (the interval lies within +-``tolerance``), "still
        learning" (wholly above it), "worse at the end" (wholly below), "undecided" (it straddles a
        bound, or there is one case: too few test cases to tell), "finds nothing" (mean 0 at the full
        budget); None without a half-budget score. ``collapsed seeds``: the seeds that :meth:`flags`
        flags, with the reason ("" when none), so that a collapse a mean hides is shown beside it."""
        import pandas as pd

        from npcrepro.evaluation import scored

        m = scored(self.metrics)
        full = m.groupby("method")[metric].mean() if len(m) else pd.Series(dtype=float)
        per_seed = (m.groupby(["method", "seed"])[metric].mean().unstack("seed")
                    if len(m) and "seed" in m else None)
        half = (scored(self.metrics_half).groupby("method")[metric].mean()
                if self.metrics_half is not None and len(self.metrics_half) else pd.Series(dtype=float))
        flags = self.flags()
        flags = flags[flags["flag"] != ""]
        rows = []
        for name in [k for k in self.methods if k in full.index]:
            row: dict = {"method": self.label(name) if labels else name}
            mine = flags[flags["method"] == name]
            if per_seed is not None and per_seed.shape[1] > 1:
                seeds = per_seed.loc[name].dropna()
                row.update({f"{metric} seed {s}": float(v) for s, v in seeds.items()})
                row["seed spread"] = float(seeds.max() - seeds.min()) if len(seeds) > 1 else float("nan")
            h = float(half[name]) if name in half.index else float("nan")
            d = float(full[name]) - h
            lo, hi = self._difference_interval(name, metric) if d == d else (float("nan"), float("nan"))
            row.update({f"{metric} at half budget": h, f"{metric} at full budget": float(full[name]),
                        "difference": d,
                        "converged": None if d != d else bool(abs(d) <= tolerance + 1e-9 and full[name] > 0),
                        "difference low": lo, "difference high": hi,
                        "reading": None if d != d else _reading(lo, hi, tolerance, float(full[name])),
                        "collapsed seeds": "; ".join(f"seed {s}: {f}" for s, f in zip(mine["seed"], mine["flag"]))})
            rows.append(row)
        return pd.DataFrame(rows)

    def flags(self, drop: float = COLLAPSE_DROP, factor: float = VOLUME_FACTOR, labels: bool = False):
        """One row per trained network (method and seed, over folds): is it a collapse that a mean over
        seeds would hide? ``dice at half budget`` / ``dice at full budget`` (mean over its test cases'
        scored rows, :func:`npcrepro.evaluation.scored`: a structure absent from a reference is left out),
        ``drop`` (half minus full), ``volume off`` (cases, with a reference, whose predicted volume is
        more than ``factor`` times or less than 1/``factor`` of it), ``cases`` and ``flag``: the
        reasons in words ("" when none): the full-budget DSC falls more than ``drop`` below the
        half-budget one, or the volume is off on most (more than half) of the cases."""
        import pandas as pd

        from npcrepro.evaluation import scored

        columns = ["method", "seed", "dice at half budget", "dice at full budget", "drop", "volume off",
                   "cases", "flag"]
        m = self.metrics
        if m is None or not len(m) or "dice" not in m:
            return pd.DataFrame(columns=columns)
        m = scored(m if "seed" in m else m.assign(seed=0))
        half = self.metrics_half
        half = (scored(half).groupby(["method", "seed"])["dice"].mean()
                if half is not None and len(half) and "seed" in half else {})
        rows = []
        for (name, seed), mine in m.groupby(["method", "seed"]):
            h = float(half.get((name, seed), float("nan")))
            full = float(mine["dice"].mean())
            off, n = _volume_off(mine, factor)
            why = []
            if h == h and h - full > drop + 1e-9:
                why.append(f"DSC fell {h - full:.3f} from half to full budget ({h:.3f} to {full:.3f})")
            if n and off > n / 2:
                why.append(f"volume off more than {factor:g}x on {off} of {n} cases")
            rows.append({"method": self.label(name) if labels else name, "seed": int(seed),
                         "dice at half budget": float(h), "dice at full budget": full, "drop": float(h - full),
                         "volume off": off, "cases": n, "flag": "; ".join(why)})
        return pd.DataFrame(rows, columns=columns)

    def _difference_interval(self, method: str, metric: str) -> tuple[float, float]:
        """95 % BCa bootstrap interval of the mean of ``metric`` at the full budget minus at half, over
        the cases scored at both (paired on case, structure, fold and seed)."""
        from npcrepro.evaluation import bootstrap_ci, scored

        full, half = scored(self.metrics), scored(self.metrics_half)
        full, half = full[full["method"] == method], half[half["method"] == method]
        keys = [k for k in ("case", "structure", "fold", "seed") if k in full and k in half]
        both = full[keys + [metric]].merge(half[keys + [metric]], on=keys, suffixes=("", " half"))
        if len(both) < 2:  # one case says nothing about the spread
            return float("nan"), float("nan")
        return bootstrap_ci(both[metric] - both[f"{metric} half"])

    def mean(self, metric: str = "dice", by: str = "method"):
        """Mean of ``metric`` per ``by`` (a Series)."""
        return self.metrics.groupby(by)[metric].mean()


def _volume_off(rows, factor: float) -> tuple[int, int]:
    """(cases whose predicted volume is off by more than ``factor`` either way, cases with a reference
    volume) over the metric ``rows`` of one network (summed over structures per case)."""
    if not {"volume_pred_cm3", "volume_ref_cm3", "case"} <= set(rows):
        return 0, 0
    per_case = rows.groupby("case")[["volume_pred_cm3", "volume_ref_cm3"]].sum()
    per_case = per_case[per_case["volume_ref_cm3"] > 0]
    ratio = per_case["volume_pred_cm3"] / per_case["volume_ref_cm3"]
    return int(((ratio > factor) | (ratio < 1 / factor)).sum()), int(len(per_case))


def _reading(lo: float, hi: float, tolerance: float, full: float) -> str:
    """What the interval [lo, hi] of a half-to-full difference says (see :meth:`Results.convergence`)."""
    if full <= 0:
        return "finds nothing"
    if not (lo == lo and hi == hi):
        return "undecided"
    if -tolerance - 1e-9 <= lo and hi <= tolerance + 1e-9:
        return "converged"
    if lo > tolerance:
        return "still learning"
    if hi < -tolerance:
        return "worse at the end"
    return "undecided"


def find_results(out_dir: str | os.PathLike = "runs", profile: str | None = None,
                 chapter: str | None = None, *, done: bool = True) -> list[Results]:
    """Every runner-written run folder under ``out_dir`` (optionally of one profile/chapter), oldest
    first; ``done`` keeps finished runs only."""
    base = Path(out_dir)
    out = []
    for p in sorted(base.glob(f"{profile or '*'}/{chapter or '*'}/*/run.json"), key=lambda q: q.parent.name):
        try:
            r = Results.open(p.parent)
        except DataError:
            continue
        if r.done or not done:
            out.append(r)
    return out
