"""Score any model's NIfTI predictions under the leaderboard's common protocol.

The protocol is the one a leaderboard run used, read from its run folder through
:class:`~npcrepro.engine.results.Results` (``splits.json``: the test patients; ``run.json``: the
structure, the training seeds and the dataset; ``metrics.csv``: every method's per-patient metrics;
``params.json``: the bootstrap size and seed), so an outsider's model is scored on **the same test
patients, with the same metrics and empty-mask rules** (:func:`npcrepro.evaluation.evaluate_cases`
on the native grid), **the same bootstrap CIs** (:func:`npcrepro.evaluation.summarize`) and **paired
tests** over patients (t-test and Wilcoxon, :func:`npcrepro.claims.compare`) against the leaderboard's
baselines.

Predictions: one file per test patient, either ``<folder>/<case>.nii.gz`` (nnU-Net's output naming)
or ``<folder>/<case>/<structure>.nii.gz`` (this project's), ``.nii``, ``.nrrd`` and ``.mha`` too, on
the case's own grid (the grid of its ``imagesTr`` file). Three errors, each one
:class:`~npcrepro.DataError`:

* missing cases: one message listing every test patient without a prediction file;
* wrong geometry: the file, and how its grid differs from the reference (shape, spacing, origin or
  direction, with :mod:`npcrepro.io`'s tolerances);
* non-binary masks: the file and its values; a label map (nnU-Net trained on several labels) can be
  scored with ``label=N`` (``--label N``), which takes voxels equal to N.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from npcrepro import io
from npcrepro.errors import DataError, ParameterError

__all__ = ["Reference", "Score", "prediction_file", "read_predictions", "score_folder", "score",
           "read_reference", "find_reference", "external_name", "write_table"]

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def external_name(folder: str | os.PathLike) -> str:
    """The default row name of a prediction folder: its folder name."""
    return Path(folder).resolve().name


def prediction_file(folder: Path, case: str, structure: str) -> Path | None:
    """The prediction of ``case`` in ``folder`` (see module docstring), or None."""
    for suffix in SUFFIXES:
        for p in (folder / f"{case}{suffix}", folder / case / f"{structure}{suffix}"):
            if p.is_file():
                return p
    return None


def read_predictions(folder: str | os.PathLike, cases: Sequence, structure: str, *,
                     label: int | None = None) -> dict[str, np.ndarray]:
    """Case name -> bool mask (z, y, x) of ``structure`` for every case in ``cases``.

    Parameters
    ----------
    folder : path
        The prediction folder.
    cases : sequence of Case
        The reference cases (their grids are the expected ones).
    label : int, optional
        Take voxels equal to ``label`` (a label map); default: the file must be a 0/1 mask.

    Raises
    ------
    DataError
        Missing folder or cases, wrong geometry, non-binary mask (see module docstring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: prediction folder not found")
    files = {c.name: prediction_file(folder, c.name, structure) for c in cases}
    missing = [n for n, p in files.items() if p is None]
    if missing:
        raise DataError(f"{folder}: no prediction for {len(missing)} of the {len(files)} test case(s): "
                        f"{', '.join(missing)} (expected <case>.nii.gz or <case>/{structure}.nii.gz)")
    out = {}
    for case in cases:
        path = files[case.name]
        vol = io.read(path)
        why = io.geometry_mismatch(case.geometry, vol.geometry) if vol.ndim == 3 else \
            f"dimension {vol.ndim} vs 3"
        if why:
            raise DataError(f"{path}: geometry differs from the reference case {case.name!r} ({why}); "
                            "predictions must be on the case's own grid")
        arr = np.asarray(vol.array)
        if label is not None:
            out[case.name] = arr == label
            continue
        values = np.unique(arr)
        if not np.isin(values, (0, 1)).all():
            shown = values[:8].tolist()
            raise DataError(f"{path}: not a binary mask (values {shown}{' ...' if len(values) > 8 else ''}); "
                            "write 0/1 masks, or pass label=N (--label N) to score one label of a label map")
        out[case.name] = arr.astype(bool)
    if label is not None and out and not any(m.any() for m in out.values()):
        # the error path reads the files again: no np.unique over every volume of a run that scores
        found = sorted(set().union(*(np.unique(np.asarray(io.read(p).array)).tolist() for p in files.values())))
        raise DataError(f"{folder}: no voxel of any prediction has label {label} (values found: "
                        f"{found[:16]}); pick one of those with --label")
    return out


def score_folder(folder: str | os.PathLike, dataset, test: Sequence[str], structure: str, *,
                 name: str, label: int | None = None, seeds: Sequence[int] = (0,)) -> pd.DataFrame:
    """Per-case metric rows of the predictions in ``folder`` on the ``test`` cases of ``dataset`` (a
    Dataset or a dataset folder), as the leaderboard scores its own: columns ``method`` (= ``name``),
    ``fold`` (0: the leaderboard is one hold-out fold), ``seed``, ``case``, ``structure``, then the
    metrics of :func:`npcrepro.evaluation.evaluate_cases`. One prediction serves every training seed
    of the run, so the rows are repeated for each of ``seeds`` (the comparisons average them per patient)."""
    from npcrepro.datasets import open_dataset
    from npcrepro.evaluation import evaluate_cases

    ds = open_dataset(dataset) if isinstance(dataset, (str, os.PathLike)) else dataset
    unknown = [n for n in test if n not in ds.cases and n not in ds.test_cases]
    if unknown:
        raise DataError(f"{ds.root}: test case(s) {unknown[:5]} of the protocol are not in this dataset")
    cases = [ds.load(n, channels=ds.channels[:1], structures=[structure]) for n in test]
    masks = read_predictions(folder, cases, structure, label=label)
    rows = evaluate_cases({n: {structure: m} for n, m in masks.items()}, cases, method=name)
    rows = pd.concat([rows.assign(fold=0, seed=int(s)) for s in seeds], ignore_index=True)
    keys = ["method", "fold", "seed", "case", "structure"]
    return rows[keys + [c for c in rows.columns if c not in keys]]


# ----------------------------------------------------------------------------------- the protocol
@dataclass
class Reference:
    """The protocol of one leaderboard run: its test patients, structure, training seeds, every
    method's per-case table (metrics.csv), the dataset it ran on, and the bootstrap size and seed."""

    run: Path
    test: list[str]
    structure: str
    seeds: list[int]
    table: pd.DataFrame
    dataset: str
    n_boot: int = 2000
    seed: int = 0


def read_reference(run: str | os.PathLike) -> Reference:
    """The protocol of the leaderboard run folder ``run`` (DataError when it is not a finished
    leaderboard run of the experiment runner)."""
    from npcrepro.engine.results import Results

    res = Results.open(run)
    if res.chapter != "leaderboard":
        raise DataError(f"{res.path}: a {res.chapter or 'non-chapter'} run, not a leaderboard run")
    if not res.done:
        raise DataError(f"{res.path}: the leaderboard run did not finish (status {res.status!r})")
    return Reference(res.path, res.test_cases(), res.structures[0], res.seeds or [0], res.metrics, res.data,
                     int(res.params.get("n_boot") or 2000), int(res.params.get("seed") or 0))


def find_reference(runs: str | os.PathLike = "runs", profile: str = "cpu", *, track: str = "phantom") -> Path:
    """The newest finished leaderboard run of ``track`` under ``<runs>/<profile>/leaderboard/``."""
    from npcrepro.engine.results import find_results

    found = [r.path for r in find_results(runs, profile, "leaderboard") if r.path.name.endswith(f"-{track}")]
    if not found:
        raise DataError(f"{Path(runs) / profile / 'leaderboard'}: no finished leaderboard run of the "
                        f"{track!r} track (run `npcrepro run leaderboard --profile {profile}` first, or "
                        "pass the run folder)")
    return found[-1]


@dataclass
class Score:
    """An outsider's result under the protocol: per-case ``table``, ``summary`` (mean, bootstrap CI
    per metric) and ``paired`` (one row per baseline and metric)."""

    name: str
    folder: Path
    reference: Reference
    table: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    metrics: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        ref = self.reference
        lines = [f"{self.name}: {len(ref.test)} test patient(s), {ref.structure}, protocol of {ref.run}",
                 f"  predictions: {self.folder}"]
        s = self.summary.set_index("metric")
        for m in self.metrics:
            r = s.loc[m]
            lines.append(f"  {m:>5}: {_ci(r['mean'], r['ci_low'], r['ci_high'])}  "
                         f"(95% bootstrap CI, n = {int(r['n'])}, {int(r['n_failed'])} failed)")
        for _, r in self.paired.iterrows():
            lines.append(f"  vs {r['baseline']} on {r['metric']}: {r['mean_a']:.4g} vs {r['mean_b']:.4g}, "
                         f"diff {_ci(r['mean_diff'], r['diff_ci_low'], r['diff_ci_high'])}, "
                         f"p (t) {r['p_t']:.3g}, p (Wilcoxon) {r['p_wilcoxon']:.3g}")
        return "\n".join(lines)


def _ci(mean: float, lo: float, hi: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:+.4f}"
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


def score(folder: str | os.PathLike, reference: Reference, dataset=None, *, name: str,
          baselines: Sequence[str], metrics: Sequence[str], label: int | None = None) -> Score:
    """Score the predictions in ``folder`` under ``reference``'s protocol.

    ``dataset``: a Dataset or folder holding the test patients (default: the run's own);
    ``baselines``: method keys of ``reference.table`` to test against (those present are used);
    ``metrics``: the metric columns summarised and tested.
    """
    from npcrepro.claims import compare
    from npcrepro.evaluation import summarize

    if name in set(reference.table["method"]):
        raise ParameterError(f"name {name!r} is already a method of the leaderboard run {reference.run}; "
                             "choose another --name")
    rows = score_folder(folder, dataset if dataset is not None else reference.dataset, reference.test,
                        reference.structure, name=name, label=label, seeds=reference.seeds)
    # one row per patient: the rows repeated for the run's seeds are one prediction
    summary = summarize(rows.drop_duplicates(["case", "structure"]), list(metrics), n_boot=reference.n_boot,
                        seed=reference.seed)
    both = pd.concat([reference.table, rows], ignore_index=True)
    tests = [{"baseline": b, **compare(both, name, b, m, n_boot=reference.n_boot, seed=reference.seed)}
             for b in baselines if b in set(reference.table["method"]) for m in metrics]
    paired = pd.DataFrame(tests) if tests else pd.DataFrame(
        columns=["baseline", "metric", "mean_a", "mean_b", "mean_diff", "diff_ci_low", "diff_ci_high", "p_t",
                 "p_wilcoxon"])
    return Score(name, Path(folder), reference, rows, summary, paired, list(metrics))


def write_table(table: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a per-case table as CSV through a temporary sibling (an existing file needs ``overwrite``)."""
    from npcrepro.paths import write_atomically

    return write_atomically(path, lambda tmp: table.to_csv(tmp, index=False), overwrite=overwrite)
