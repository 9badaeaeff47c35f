"""Apply a finished run's network to new patients: ``npcrepro predict RUN INPUT OUT``.

A run folder holds, per method, fold and seed, the trained weights (``model.pt``) and, in
``params.json`` and ``run.json``, everything that built and fed them: the chapter, its parameters, the
channels each method reads. :func:`predict` rebuilds the network through the chapter's own ``build``,
loads the weights, and runs the chapter's own ``predict`` (the normalisation, windows and test-time
rules the run was scored with) on each new case, then thresholds as the run did. Cascades (a method
that runs after another, e.g. a coarse and a fine network) load the first network of the same fold
and seed.

Input: a dataset folder in the project format (every case, its ``imagesTr`` then ``imagesTs``), one
image file (NIfTI, NRRD, MHA) for a network that reads one channel, or a folder holding one DICOM
image series (also for one channel). The input must have the channels the network reads (named as in
the run; a single file or series stands for the network's one channel) and, unless ``any_spacing``,
voxels within 10 % of the training data's spacing where the run records it (``run.json``
``spacing_mm``; older runs do not).

Output: ``OUT/<case>/<structure>.nii.gz``, 0/1 masks on each case's own grid (as a run's
``predictions/``), and ``OUT/predict.json`` saying which run, method, folds and seeds made them. From
a DICOM series, ``export="rtstruct"`` or ``"dicomseg"`` also writes ``OUT/<case>/<format>.dcm``
referencing that series (:func:`npcrepro.dicom.export.export`, read back and checked).

Not every chapter can predict on new patients: the template's and the leaderboard's networks (every
paper's network under the common protocol, cascades included) can; a chapter whose preparation
reads a contour (xue2020, chen2020 and guo2021 crop around the tumour, luo2020 prepares its own
loader's items, li2018 reads one DCE frame its run does not record as a channel) says so in one line.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from npcrepro.errors import DataError, ParameterError, did_you_mean

__all__ = ["predict", "PredictReport", "SPACING_TOLERANCE"]

#: The largest relative difference, per axis, between an input's voxel size and the training data's.
SPACING_TOLERANCE = 0.10


@dataclass
class PredictReport:
    """What :func:`predict` wrote: the masks per case (structure -> path) and the DICOM exports."""

    out: Path
    method: str
    folds: list[int]
    seeds: list[int]
    masks: dict[str, dict[str, Path]] = field(default_factory=dict)
    exports: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        n = sum(len(v) for v in self.masks.values())
        lines = [f"{len(self.masks)} case(s), {n} mask(s) under {self.out} ({self.method}, fold(s) "
                 f"{', '.join(map(str, self.folds))}, seed(s) {', '.join(map(str, self.seeds))})"]
        lines += [f"  {p}" for p in self.exports]
        return "\n".join(lines)


class _Context:
    """What a chapter's ``predict`` reads from its job context, for a network loaded from a run."""

    def __init__(self, chapter, run: Path, P, device: str, fold: int, seed: int):
        self.chapter, self.run_path, self.P, self.device = chapter, run, P, device
        self.fold, self.seed, self.progress, self.facts = fold, seed, False, {}
        self._models: dict[str, Any] = {}

    def model_of(self, name: str):
        if name not in self._models:
            self._models[name] = _load(self.chapter, self.run_path, name, self.fold, self.seed, self.P, self.device)
        return self._models[name]


def _load(chapter, run: Path, method: str, fold: int, seed: int, P, device: str):
    import torch

    from npcrepro.engine.runs import job_dir

    path = job_dir(run, method, fold, seed) / "model.pt"
    if not path.exists():
        raise DataError(f"{run}: no trained weights for {method}, fold {fold}, seed {seed} ({path} is missing)")
    m = chapter.method(method, P)
    try:
        net = chapter.build(m, P)
    except (NotImplementedError, TypeError) as exc:
        raise DataError(f"{chapter.name}: its networks cannot be rebuilt outside a training job "
                        f"({type(exc).__name__}); predict supports the chapters whose build takes the run's "
                        f"parameters alone") from None
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as exc:
        raise DataError(f"{path}: the weights do not fit {method}'s network as this version builds it "
                        f"({str(exc).splitlines()[0]})") from None
    return net.to(device).eval()


def _cases(source: Path, channels: Sequence[str]) -> list[Callable[[], tuple[Any, Any]]]:
    """One loader per new patient at ``source`` (see the module docstring), each giving (case, DICOM
    series or None); the input is checked here, before any case is read."""
    from npcrepro import io
    from npcrepro.datasets import Case, open_dataset
    from npcrepro.dicom.export import MASK_SUFFIXES, file_stem

    def case_of(name: str, vol, series=None):
        g = vol.geometry
        return Case(name, {channels[0]: np.asarray(vol.array, np.float32)}, {}, g.spacing, g.origin,
                    g.direction), series

    if (source / "dataset.json").exists():
        ds = open_dataset(source)
        missing = [c for c in channels if c not in ds.channels]
        if missing:
            raise DataError(f"{source}: the network reads channel(s) {', '.join(channels)}; the dataset has "
                            f"{', '.join(ds.channels)} (missing {', '.join(missing)})")
        return [functools.partial(lambda n: (ds.load(n, channels=list(channels), structures=[]), None), name)
                for name in [*ds.cases, *getattr(ds, "test_cases", [])]]
    if len(channels) != 1:
        raise DataError(f"{source}: one image stands for one channel, and the network reads {len(channels)} "
                        f"({', '.join(channels)}): give a dataset folder with those channels")
    if source.is_file() and file_stem(source) is not None:
        return [lambda: case_of(file_stem(source), io.read(source))]
    if source.is_dir():
        from npcrepro.dicom.series import find_dicom, read_series

        index = find_dicom(source)
        if len(index.series) != 1:
            raise DataError(f"{source}: holds {len(index.series)} DICOM image series; give a folder with exactly "
                            f"one (or a dataset folder, or an image file)")
        files = next(iter(index.series.values()))

        def dicom():
            series = read_series(files, source)
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in series.patient_id) or "case"
            return case_of(name, series.volume, series)

        return [dicom]
    raise DataError(f"{source}: not a dataset folder, an image file ({', '.join(MASK_SUFFIXES)}) or a DICOM folder")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"failed: {text}" if isinstance(exc, DataError) else f"failed ({type(exc).__name__}: {text})"


def _check_spacing(case, trained: Sequence[float] | None, any_spacing: bool) -> None:
    if trained is None or any_spacing:
        return
    got, want = np.asarray(case.spacing, float), np.asarray(trained, float)
    if np.any(np.abs(got - want) > SPACING_TOLERANCE * want):
        show = lambda v: " x ".join(f"{x:.3g}" for x in v)  # noqa: E731
        raise DataError(f"{case.name}: voxels of {show(got)} mm, the network was trained on {show(want)} mm "
                        f"(more than {SPACING_TOLERANCE:.0%} apart on an axis): resample the scan, or pass "
                        f"--any-spacing to predict anyway")


def predict(run: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike, *,
            method: str | None = None, fold: int | str = "ensemble", seed: int | None = None,
            device: str = "auto", export: str | None = None, any_spacing: bool = False,
            overwrite: bool = False, progress: bool = False) -> PredictReport:
    """Apply run ``run``'s ``method`` to every case at ``source``; write masks under ``out``.

    Parameters
    ----------
    method : str, optional
        Which of the run's methods (default: its only one).
    fold : int or "ensemble"
        One fold's network, or the mean probability of every fold's (default), thresholded once.
    seed : int, optional
        One seed (default: every seed of the run, averaged with the folds).
    export : "rtstruct" or "dicomseg", optional
        Also write the masks as that DICOM object, for a DICOM series input.

    Raises
    ------
    DataError
        Not a finished run folder, missing weights, an input without the channels the network reads
        or with another voxel size, a chapter that cannot predict on new patients.
    ParameterError
        Unknown method, fold, seed or export format; an existing ``out`` without ``overwrite``.
    """
    from npcrepro import io
    from npcrepro.chapters import MODULES
    from npcrepro.engine.chapter import load_chapter
    from npcrepro.engine.device import resolve_device
    from npcrepro.engine.results import Results
    from npcrepro.profiles import Params

    res = Results.open(run)
    if not res.done:
        raise DataError(f"{res.path}: the run has not finished (status {res.info.get('status')!r})")
    if res.chapter not in MODULES:
        raise DataError(f"{res.path}: a run of {res.chapter!r}, which trains no network this version knows")
    methods = [m for m in res.methods if m not in res.added_rows]  # rows scored from others' predictions
    if method in res.added_rows:
        raise ParameterError(f"{method!r} of {res.path} is a row scored from prediction files "
                             f"({res.added_rows[method]}), not a network this run trained (valid: "
                             f"{', '.join(methods)})")
    if method is None:
        if len(methods) != 1:
            raise ParameterError(f"{res.path} holds {len(methods)} methods ({', '.join(methods)}): name one with "
                                 f"--method")
        method = methods[0]
    if method not in methods:
        raise ParameterError(f"unknown method {method!r} of {res.path} (valid: {', '.join(methods)})."
                             + did_you_mean(method, methods))
    n_folds = int(res.method_info(method).get("folds") or res.folds or 1)
    folds = list(range(n_folds)) if fold == "ensemble" else [int(fold)]
    if any(f not in range(n_folds) for f in folds):
        raise ParameterError(f"fold {fold!r}: the run has folds 0-{n_folds - 1} (or 'ensemble')")
    seeds = list(res.seeds) if seed is None else [int(seed)]
    if any(s not in res.seeds for s in seeds):
        raise ParameterError(f"seed {seed!r}: the run has seeds {', '.join(map(str, res.seeds))}")
    if export is not None and export not in ("rtstruct", "dicomseg"):
        raise ParameterError(f"unknown export format {export!r} (valid: rtstruct, dicomseg)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ParameterError(f"{out} exists and is not empty (pass --overwrite to write into it)")

    chapter = load_chapter(MODULES[res.chapter])
    dev = resolve_device(device)
    P = Params({**res.params, "device": str(dev), "progress": False})
    channels = list(res.method_info(method).get("channels") or res.channels or [])
    if not channels:
        raise DataError(f"{res.path}: the run does not record the channels its networks read")
    contexts = [_Context(chapter, res.path, P, str(dev), f, s) for f in folds for s in seeds]
    nets = [ctx.model_of(method) for ctx in contexts]
    m = chapter.method(method, P)
    thr = chapter.threshold(P)
    report = PredictReport(out, method, folds, seeds)
    loaders = _cases(Path(source), channels)
    if progress:
        from npcrepro.paths import progress_bar as tqdm

        loaders = tqdm(loaders, desc="predicting", unit="case")
    for load in loaders:
        case, series = load()
        _check_spacing(case, res.info.get("spacing_mm"), any_spacing)
        try:
            prepared = chapter.prepare(case, P)
            probs = [chapter.predict(m, net, prepared, ctx) for net, ctx in zip(nets, contexts)]
        except (KeyError, TypeError, DataError) as exc:  # its preparation reads a contour, or its own loader's items
            why = f"needs {exc.args[0]!r}" if isinstance(exc, KeyError) else _one_line(exc)
            raise DataError(f"{res.chapter} cannot predict on a new patient: preparing {case.name} {why} "
                            f"(its cases are prepared from their contours; template and the leaderboard's "
                            f"networks can)") from None
        written = {}
        for structure in probs[0]:
            prob = np.mean([p[structure] for p in probs], axis=0)
            if prob.shape != case.shape:
                raise DataError(f"{res.chapter}: predicted {structure} with shape {prob.shape}, not the case's "
                                f"{case.shape}")
            mask = (prob >= thr).astype(np.uint8)
            written[structure] = io.write(io.Volume.on_grid(mask, case.geometry),
                                          out / case.name / f"{structure}.nii.gz")
        report.masks[case.name] = written
        if export and series is not None:
            from npcrepro.dicom.export import export as write_dicom

            target = out / case.name / f"{export}.dcm"
            write_dicom(out / case.name, series.folder, target, kind=export, series_uid=series.series_uid,
                        overwrite=True)
            report.exports.append(target)
        elif export:
            raise ParameterError(f"--export {export} needs a DICOM series as input ({source} is not one)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict.json").write_text(json.dumps({
        "run": str(res.path), "chapter": res.chapter, "method": method, "folds": folds, "seeds": seeds,
        "threshold": thr, "source": str(source), "channels": channels, "device": str(dev),
        "cases": sorted(report.masks)}, indent=1), encoding="utf-8")
    return report
