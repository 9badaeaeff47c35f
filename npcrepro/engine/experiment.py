"""The one experiment runner: every chapter and the leaderboard train and score through it.

A chapter describes *what* to run by subclassing :class:`Chapter` (methods, how a case becomes model
inputs, how a method is trained and predicts); :func:`run_experiment` does the rest, the same way for
every chapter::

    run folder (new, or resumed after the parameter check)
      -> cases and splits (saved to splits.json; a resumed run keeps its folds)
      -> jobs: method x fold x seed; a job that uses another method's trained model (``Method.after``)
         starts as soon as that job (same fold and seed) is done, not after a whole wave
      -> per job: prepare cases, fit, save model.pt, predict every test case on its own grid,
         threshold, write predictions, score with npcrepro.evaluation, mark the job DONE
      -> pooled metrics.csv and training.csv, run.json status "done"
      -> Results (npcrepro.engine.results)

Run folder layout (one for all chapters)::

    <out_dir>/<profile>/<chapter>/<stamp>-<name>/
        params.json  environment.json  run.json  splits.json
        metrics.csv                      method, fold, seed, case, structure, metrics...
        metrics_half.csv                 the same, with each network's weights at half its budget
        raters.csv                       the raters' agreement on the test cases (where the data has raters)
        training.csv                     method, fold, seed, seconds from the job's start (preparing the cases,
                                         to the first training step, training, predicting), iterations, ...
        added_rows.json                  rows scored from prediction folders after the run (the leaderboard's
                                         nnU-Net and external rows; npcrepro.engine.results.ADDED_ROWS)
        <method>/fold_<k>/seed_<s>/
            model.pt  model_half.pt  curves.csv  checkpoint_last.pt  metrics.csv  metrics_half.csv
            training.json  DONE
            predictions/<case>/<structure>.nii.gz      always on the case's own grid

Resume: ``P.resume`` names an earlier run folder; its parameters must match (``resume``,
``out_dir`` and ``device`` may differ), jobs marked DONE are read back, a killed job starts again
from its ``checkpoint_last.pt`` when the chapter's ``fit`` passes ``ctx.resume`` to the Trainer.

Jobs run on one dispatch interface (:func:`npcrepro.engine.dispatch.map_calls`): a local process pool
by default (``P.workers``; torch threads = cores / workers in each), in this process
(``workers=1``), or on a Dask or SLURM cluster (``P.backend``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from npcrepro.engine.chapter import (DRY_RUN_CASES, DRY_RUN_ITERATIONS, DRY_RUN_OVERRIDES, Chapter, JobContext,
                                     JobKilled, JobSpec, Method, Track, load_chapter, uses_held_out)
from npcrepro.engine.half_budget import half_budget_model
from npcrepro.engine.runs import job_dir
from npcrepro.errors import DataError, ParameterError

__all__ = ["Method", "Track", "Chapter", "JobContext", "JobSpec", "JobKilled", "run_experiment", "run_track", "run_job",
           "job_dir", "load_chapter", "RUN_FORMAT", "dry_run_params", "DRY_RUN_ITERATIONS",
           "DRY_RUN_CASES", "uses_held_out"]

#: Version of the run-folder layout written in run.json.
RUN_FORMAT = 2

# ---------------------------------------------------------------------------------- one job
def _write_json(path: Path, data: Any) -> None:
    from npcrepro.engine.runs import _atomic_write_text, to_jsonable

    _atomic_write_text(path, json.dumps(to_jsonable(data), indent=2))


_PREPARED: dict[tuple, Any] = {}
_PREPARED_LOCK = threading.Lock()

#: At most this many threads load and prepare a job's cases at once (:func:`_prepare_cases`).
PREPARE_THREADS = 8


def _prepared(chapter: Chapter, ds, name: str, P) -> Any:
    """``chapter.prepare(case)``, kept for the next job in this process (same chapter, data and
    parameters) up to ``chapter.cache_prepared`` cases. Safe to call from several threads."""
    if not chapter.cache_prepared:
        return chapter.prepare(chapter.load(ds, name, P), P)
    from npcrepro.engine.runs import to_jsonable

    free = ("resume", "out_dir", "device", "progress", "workers", "backend")
    key = (chapter.name, name, json.dumps(to_jsonable({k: v for k, v in P.items() if k not in free}),
                                          sort_keys=True))
    with _PREPARED_LOCK:
        if key in _PREPARED:
            return _PREPARED[key]
    value = chapter.prepare(chapter.load(ds, name, P), P)
    with _PREPARED_LOCK:
        while len(_PREPARED) >= chapter.cache_prepared:
            _PREPARED.pop(next(iter(_PREPARED)))
        _PREPARED[key] = value
    return value


def _prepare_cases(chapter: Chapter, ds, names: Sequence[str], P) -> dict[str, Any]:
    """{name: prepared case} for a job's cases, loaded and prepared by up to :data:`PREPARE_THREADS`
    threads (no more than the job's torch threads). Decompressing image files and most array work
    release the GIL: on the H100 loan, a job of xue2020 at gpu-lite read and prepared its 40 cases
    one by one for minutes while the GPU waited. Each case's preparation depends on that case and
    the parameters only, so the result is the same with any number of threads."""
    import torch

    names = list(dict.fromkeys(names))
    n = max(1, min(PREPARE_THREADS, torch.get_num_threads(), len(names)))
    if n == 1:
        return {name: _prepared(chapter, ds, name, P) for name in names}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n, thread_name_prefix="npcrepro-prepare") as pool:
        return dict(zip(names, pool.map(lambda name: _prepared(chapter, ds, name, P), names)))


def run_job(spec: JobSpec) -> dict:
    """Train, predict and score one job; writes its folder and returns
    ``{"rows": [...], "half": [...], "training": {...}}``. Module level and picklable (runs in
    workers). ``P.threads`` (when set, on the CPU) pins torch's threads for the job: the one place
    the package sets them besides the pool workers' start-up."""
    import torch

    n = spec.params.get("threads")
    if not n or str(spec.params.get("device", "cpu")).startswith("cuda"):
        return _run_job(spec)
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        return _run_job(spec)
    finally:
        torch.set_num_threads(before)


def _run_job(spec: JobSpec) -> dict:
    import pandas as pd
    import torch

    from npcrepro.datasets import open_dataset
    from npcrepro.engine.device import seed_everything
    from npcrepro.profiles import Params

    chapter = load_chapter(spec.chapter)
    P = Params(spec.params)
    ctx = JobContext(chapter, spec, P)
    method = chapter.method(spec.method, P)
    ds = open_dataset(P["data"])
    t0 = ctx.started  # every record of the job's seconds counts from here
    prep = _prepare_cases(chapter, ds, [*spec.train, *spec.val, *spec.test], P)
    prepare_seconds = time.perf_counter() - t0
    seed_everything(ctx.seed)
    model = chapter.fit(method, [prep[n] for n in spec.train], [prep[n] for n in spec.val], ctx)
    train_seconds = time.perf_counter() - t0
    if ctx.run.writer:  # under torchrun: rank 0 writes the job's files
        torch.save(model.state_dict(), ctx.run.path / "model.pt")
    model.eval()
    thr = chapter.threshold(P)
    rows = []
    predicted = list(spec.test) if P.get("dry_run") != "plan" else []
    infer_seconds = 0.0
    for name in predicted:
        t1 = time.perf_counter()
        probs = chapter.predict(method, model, prep[name], ctx)
        seconds = time.perf_counter() - t1
        infer_seconds += seconds
        case = chapter.case_of(prep[name])
        masks = {}
        for structure, prob in probs.items():
            if prob.shape != case.shape:
                raise DataError(f"{spec.chapter}: {method.name} predicted {structure} of {name} with "
                                f"shape {prob.shape}, not the case grid {case.shape}")
            masks[structure] = prob >= thr
            ctx.run.write_prediction(name, structure, masks[structure], case.geometry)
        if P.get("dry_run") and P.get("dry_run_score") is False:
            continue  # a dry run that checks predictions only (surface metrics of an untrained
            # network's full-volume masks take a minute per structure at paper size)
        for r in chapter.score(method, prep[name], probs, masks, ctx):
            rows.append({"method": method.name, "fold": spec.fold, "seed": spec.seed, **r,
                         "seconds": seconds})
    half_rows = []
    half = half_budget_model(chapter, method, model, ctx) if P.get("half_budget_check", True) else None
    if half is not None:
        for name in spec.test:
            probs = chapter.predict(method, half, prep[name], ctx)
            masks = {st: prob >= thr for st, prob in probs.items()}
            for r in chapter.score(method, prep[name], probs, masks, ctx):
                half_rows.append({"method": method.name, "fold": spec.fold, "seed": spec.seed, **r})
    training = {"method": method.name, "fold": spec.fold, "seed": spec.seed,
                "train_seconds": train_seconds, "job_seconds": time.perf_counter() - t0,
                "prepare_seconds": prepare_seconds, "prepared_cases": len(prep),
                "infer_seconds": infer_seconds, "inferred_cases": len(predicted), **ctx.facts}
    if ctx.run.writer:
        pd.DataFrame(rows).to_csv(ctx.run.path / "metrics.csv", index=False)
        pd.DataFrame(half_rows).to_csv(ctx.run.path / "metrics_half.csv", index=False)
        _write_json(ctx.run.path / "training.json", training)
    ctx.run.mark_done()
    from npcrepro.engine import distributed as D

    D.barrier()
    return {"rows": rows, "training": training, "half": half_rows}


def _spacing(ds, folds) -> dict:
    """``{"spacing_mm": [z, y, x]}`` of the first training case (read from its first channel), or {}."""
    first = next((c for f in folds for c in f.train), None)
    if first is None or not getattr(ds, "channels", None):
        return {}
    try:
        case = ds.load(first, channels=ds.channels[:1], structures=[])
    except (DataError, OSError, TypeError):
        return {}
    return {"spacing_mm": [round(float(s), 6) for s in case.spacing]}


def _phantom_record(ds) -> dict:
    """``{"phantom": {generator_version, generator_fingerprint, preset}}`` where ``ds`` is a phantom
    cohort (its ``dataset.json`` record, :func:`npcrepro.phantom.cohort_record`), else {}: which
    phantom a run's numbers are of, so that runs made on other versions are not set side by side
    unmarked (:attr:`npcrepro.engine.results.Results.phantom_version`)."""
    extra = ((getattr(ds, "meta", None) or {}).get("npcrepro") or {}).get("extra") or {}
    if not isinstance(extra, dict):
        return {}
    # the record itself, or one level down where a chapter's own cohort keeps it under a name of its
    # own (li2018's DCE slices: {"li2018_dce": record, ...})
    for record in (extra, *(v for v in extra.values() if isinstance(v, dict))):
        if record.get("generator") == "npcrepro.phantom":
            return {"phantom": {k: record.get(k) for k in ("generator_version", "generator_fingerprint", "preset")}}
    return {}


def _write_raters(path: Path, chapter, ds, metrics, P) -> None:
    """``raters.csv``: the raters' agreement on the run's test cases (:meth:`Chapter.rater_agreement`),
    where the dataset holds raters of a scored structure; nothing written where it holds none."""
    table = chapter.rater_agreement(ds, sorted(set(metrics["case"].astype(str))), sorted(set(metrics["structure"])), P)
    if len(table):
        table.to_csv(path / "raters.csv", index=False)


def _read_job(spec: JobSpec) -> dict | None:
    import pandas as pd

    d = job_dir(spec.run, spec.method, spec.fold, spec.seed)
    if not (d / "DONE").exists() or not (d / "metrics.csv").exists():
        return None
    def read(name: str) -> list[dict]:
        try:
            return pd.read_csv(d / name).to_dict("records") if (d / name).exists() else []
        except pd.errors.EmptyDataError:
            return []

    return {"rows": read("metrics.csv"), "half": read("metrics_half.csv"),
            "training": json.loads((d / "training.json").read_text(encoding="utf-8"))}


# ---------------------------------------------------------------------------------- the run
def _waves(methods: Sequence[Method]) -> list[list[Method]]:
    """Methods in dependency order: each wave needs only methods of earlier waves."""
    from npcrepro.engine.dispatch import levels

    index = {m.name: i for i, m in enumerate(methods)}
    for m in methods:
        missing = [a for a in m.after if a not in index]
        if missing:
            raise ParameterError(f"method {m.name!r} runs after {missing}, which are not selected")
    names = [m.name for m in methods]
    return [[methods[i] for i in level]
            for level in levels([[index[a] for a in m.after] for m in methods], f"methods {names}")]


def _needs(todo: Sequence["JobSpec"], methods: Sequence[Method]) -> list[list[int]]:
    """For each job of ``todo``, the indices of the jobs it waits for: the same fold and seed of the
    methods its method runs after (those already finished are not waited for)."""
    after = {m.name: m.after for m in methods}
    index = {(j.method, j.fold, j.seed): i for i, j in enumerate(todo)}
    return [[index[(a, j.fold, j.seed)] for a in after.get(j.method, ()) if (a, j.fold, j.seed) in index]
            for j in todo]


def _run_json(rf, chapter: Chapter, structures, methods, folds, seeds, status: str, *, channels=None,
              **extra) -> None:
    info = {"format": RUN_FORMAT, "chapter": chapter.name, "status": status,
            "methods": [{"name": m.name, "label": m.label, "after": list(m.after), "info": dict(m.info),
                         "folds": m.folds} for m in methods],
            "folds": len(folds), "seeds": list(seeds), "structures": list(structures),
            "channels": list(chapter.channels if channels is None else channels),
            "updated": _dt.datetime.now().isoformat(timespec="seconds"), **extra}
    if rf.writer:
        _write_json(rf.path / "run.json", info)


def dry_run_params(P: Mapping[str, Any], cases: int = DRY_RUN_CASES, mode: bool | str = True) -> dict:
    """The parameters of a dry run of ``P``: the same sizes (image, crop, patch, phantom grid,
    networks, batch sizes), ``cases`` patients, one seed, one job at a time, no half-budget check,
    run folders under ``<out_dir>/dryrun/`` (where no chapter, leaderboard or book reader looks).
    ``mode="plan"``: only measure (each stage's first step on the meta device), train and predict
    nothing; ``mode="time"``: train every stage :data:`~npcrepro.engine.chapter.TIMED_ITERATIONS`
    iterations and time them (a calibration of the plan)."""
    if mode not in (True, "plan", "time"):
        raise ParameterError(f"dry run mode must be True, 'plan' or 'time', got {mode!r}")
    out = dict(P)
    out.update(dry_run=mode, seeds=1, workers=1, half_budget_check=False, resume="",
               out_dir=str(Path(P["out_dir"]) / "dryrun"))
    if out.get("n_cases"):
        out["n_cases"] = int(cases)
    out.update({k: v for k, v in DRY_RUN_OVERRIDES.items() if out.get(k)})
    return out


def _dry_run_folds(cases: Sequence[str]):
    """One fold over the first three cases: train, validation, test (one patient each)."""
    from npcrepro.datasets.splits import Fold

    if len(cases) < 3:
        raise DataError(f"a dry run needs 3 cases (train, validation, test), the data hold {len(cases)}")
    return [Fold([cases[0]], [cases[1]], [cases[2]])]


def run_track(module: str, P: Mapping[str, Any], track: str, **kwargs):
    """Run the :class:`~npcrepro.engine.chapter.Track` ``track`` that chapter ``module`` declares:
    read its data (``source``), derive its parameters from ``P`` and run them with
    :func:`run_experiment` (``kwargs``) in a run folder named for the track; a dataset folder is
    passed as ``data``, an opened dataset as ``dataset=``.

    Returns (its :class:`~npcrepro.engine.results.Results`, or None where its data are absent and
    nothing ran; the sentence its source gave: what it read or why it was skipped)."""
    t = load_chapter(module).track(track)
    data, note = t.source(P) if t.source is not None else (P["data"], "")
    if data is None:
        return None, note
    if isinstance(data, (str, os.PathLike)):
        return run_experiment(module, t.params(P, str(data)), name=t.name, **kwargs), note
    return run_experiment(module, t.params(P, data), name=t.name, dataset=data, **kwargs), note


def run_experiment(module: str, P: Mapping[str, Any], *, name: str = "run", dataset=None,
                   methods: Sequence[str] | None = None, backend: str | None = None,
                   workers: int | None = None, max_jobs: int | None = None,
                   kill_after_iterations: int | None = None, progress: bool | None = None,
                   data_label: str | None = None, dry_run: bool | str = False):
    """Run chapter ``module`` (e.g. ``"npcrepro.chapters.chen2020"``) with resolved parameters ``P``.

    ``dataset``: an opened dataset (default: :func:`npcrepro.profiles.load_data`); ``methods``: a
    subset of the chapter's methods by name; ``backend``/``workers``: how jobs are dispatched
    (default ``P.backend`` or "process", ``P.workers`` or 1); ``max_jobs``: stop after this many new
    jobs (the run stays "running" and can be resumed); ``kill_after_iterations``: the first job
    started is killed at that training iteration (as a kill would, after its last checkpoint) and the
    run stops there. Both are test hooks that simulate a kill. ``data_label`` names the data in
    tables (default: "phantom" or the dataset folder).

    ``dry_run``: check that the profile runs, at its full sizes, in minutes (:func:`dry_run_params`):
    three patients (one fold: train, validation and test one each), every method, every stage of
    every network trained for :data:`DRY_RUN_ITERATIONS` iterations, one full-size prediction per
    method, scored and written like any run, in ``<out_dir>/dryrun/<profile>/<chapter>/`` with
    ``"dry_run": true`` in run.json and a ``DRY_RUN`` file. Its numbers mean nothing. Every
    network's first step of every stage is measured (``plan.json``, read by :mod:`npcrepro.plan`);
    ``dry_run="plan"`` only measures (no training step, no prediction); ``dry_run="time"`` also
    times the iterations of every stage (:class:`~npcrepro.engine.probe.PlanProbe`).

    Returns :class:`npcrepro.engine.results.Results`.
    """
    from npcrepro.profiles import Params

    if dry_run:
        P = Params(dry_run_params(P, mode=dry_run))
        tag = {"plan": "plan", "time": "timed"}.get(dry_run, "dryrun")
        name = f"{name}-{tag}" if name != "run" else tag
    import pandas as pd

    from npcrepro.datasets.splits import save_splits, load_splits
    from npcrepro.engine.dispatch import map_calls
    from npcrepro.engine.results import Results
    from npcrepro.engine.runs import RunFolder
    chapter = load_chapter(module)
    progress = bool(P.get("progress", True)) if progress is None else progress
    ds = dataset if dataset is not None else chapter.dataset(P, progress=progress)
    chosen = chapter.methods(P)
    if methods is not None:
        unknown = [m for m in methods if m not in {c.name for c in chosen}]
        if unknown:
            raise ParameterError(f"{chapter.name}: unknown method(s) {unknown} "
                                 f"(valid: {', '.join(c.name for c in chosen)})")
        chosen = [c for c in chosen if c.name in methods]
    waves = _waves(chosen)
    params = dict(P)
    params["data"] = str(getattr(ds, "root", P["data"]))
    # a dataset handed in (a real-data track of a phantom chapter) names itself, not P.data
    phantom = P["data"] == "phantom" and getattr(ds, "source", "phantom") == "phantom"
    label = data_label or ("phantom" if phantom else params["data"])
    rf = RunFolder.from_params(P, name, paper=chapter.name)
    cases = chapter.cases(ds, P)
    ds_test = list(getattr(ds, "test_cases", None) or [])
    split_file = rf.path / "splits.json"
    folds = (load_splits(split_file, cases + ds_test) if split_file.exists()
             else _dry_run_folds(cases) if P.get("dry_run") else chapter.split(ds, cases, P))
    held_out = sorted({c for f in folds for c in f.test} & set(ds_test))
    if rf.writer and not split_file.exists():
        save_splits(folds, split_file)
    seeds = chapter.seeds(P)
    structures = chapter.structures_for(P, ds)
    channels = chapter.channels_for(P, ds)
    dry = {"dry_run": P["dry_run"]} if P.get("dry_run") else {}
    if dry and rf.writer:
        (rf.path / "DRY_RUN").write_text("a dry run: sizes of the profile, 2 iterations per network; "
                                         "its numbers mean nothing\n", encoding="utf-8")
    # run.json: a dry run says so; a run scored on the dataset's held-out cases counts them; the voxel
    # size of the first training case, which `npcrepro predict` holds new patients to; the phantom's version
    facts = {**dry, **({"held_out": len(held_out)} if held_out else {}), **_spacing(ds, folds), **_phantom_record(ds)}
    _run_json(rf, chapter, structures, chosen, folds, seeds, "running", data=params["data"],
              data_label=label, channels=channels, **facts)
    job_params = {**params, "progress": False}
    results: dict[tuple, dict] = {}
    t0 = time.perf_counter()
    n_jobs = sum(len(folds[: m.folds]) for w in waves for m in w) * len(seeds)
    try:
        todo = []
        for wave in waves:
            for m in wave:
                for k, fold in enumerate(folds[: m.folds]):
                    for s in seeds:
                        spec = JobSpec(module, m.name, k, s, str(rf.path), job_params, list(fold.train),
                                       list(fold.val), list(fold.test))
                        old = _read_job(spec)
                        if old is not None:
                            results[(m.name, k, s)] = old
                        else:
                            todo.append(spec)
        if os.environ.get("NPCREPRO_JOB_ORDER") == "reverse":  # the stability bench: does the order matter?
            todo = todo[::-1]
        if max_jobs is not None:
            todo = todo[: max(0, max_jobs)]
        if kill_after_iterations is not None and todo:
            todo[0].kill_after_iterations = int(kill_after_iterations)
            try:
                run_job(todo[0])
            except JobKilled:
                todo = []
            else:
                raise ParameterError(f"kill_after_iterations={kill_after_iterations}: the job finished "
                                     f"before it was killed (does the chapter train through ctx.trainer_args?)")
        for spec, out in map_calls(run_job, todo, backend=backend or P.get("backend") or "process",
                                   workers=int(workers or P.get("workers") or 1), progress=progress,
                                   desc=chapter.name, needs=_needs(todo, chosen)):
            results[(spec.method, spec.fold, spec.seed)] = out
            if progress:
                print(f"[{chapter.name}] {len(results)}/{n_jobs} {spec.label} done "
                      f"({out['training']['job_seconds']:.0f} s)", flush=True)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _run_json(rf, chapter, structures, chosen, folds, seeds, "failed", data=params["data"],
                  data_label=label, error=reason, channels=channels, **facts)
        rf.mark_failed(reason)
        raise
    complete = len(results) == n_jobs
    order = {(m.name, k, s): i for i, (m, k, s) in enumerate(
        (m, k, s) for w in waves for m in w for k in range(len(folds[: m.folds])) for s in seeds)}
    keys = sorted(results, key=order.__getitem__)
    metrics = pd.DataFrame([r for key in keys for r in results[key]["rows"]])
    half = pd.DataFrame([r for key in keys for r in results[key].get("half", [])])
    training = pd.DataFrame([results[key]["training"] for key in keys])
    if rf.writer:
        rf.write_metrics(metrics)
        half.to_csv(rf.path / "metrics_half.csv", index=False)
        training.to_csv(rf.path / "training.csv", index=False)
        if complete and len(metrics) and "structure" in metrics:
            _write_raters(rf.path, chapter, ds, metrics, P)
    _run_json(rf, chapter, structures, chosen, folds, seeds, "done" if complete else "running", data=params["data"],
              data_label=label, channels=channels, **facts,
              seconds=time.perf_counter() - t0)
    if complete:
        rf.mark_done()
    from npcrepro.engine import distributed as D

    D.barrier()  # under torchrun: every rank reads the folder rank 0 wrote
    return Results.open(rf.path)
