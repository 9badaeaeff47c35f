"""Cross-validation runner: LOOCV, k-fold and holdout over a dataset's cases, folds one after the other
or in parallel processes, per-case results pooled into one table.

>>> folds = make_folds(dataset, "kfold", k=5, seed=0, val_fraction=0.25, run=run)
>>> table = run_folds(train_fold, folds, run=run, parallel=2, params=P)

``train_fold(fold, index, run, **kwargs)`` is any importable module-level function (it must pickle for
``parallel``; processes are started with "spawn") returning the fold's per-case table (a DataFrame or a
list of dicts). The runner adds a ``fold`` column, writes ``fold_<i>/metrics.csv`` and the pooled
``metrics.csv``, and with ``resume=True`` skips folds whose sub-run is marked done.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from typing import Callable, Sequence

from npcrepro.datasets.splits import Fold, load_splits, make_splits, save_splits
from npcrepro.errors import ParameterError

__all__ = ["make_folds", "run_folds", "SCHEMES"]

SCHEMES = ("loocv", "kfold", "holdout")


def make_folds(cases_or_dataset, scheme: str = "kfold", *, seed: int = 0, k: int = 5,
               val_fraction: float | None = None, n_val: int | None = None,
               n_test: int | float = 0.2, max_folds: int | None = None, run=None) -> list[Fold]:
    """Folds by case (see :func:`npcrepro.datasets.make_splits`); ``max_folds`` keeps the first few
    (small profiles); with ``run`` the folds are saved as ``splits.json`` (or read back from it when
    the run already has one, so a resumed run keeps its folds)."""
    if scheme not in SCHEMES:
        raise ParameterError(f"unknown cross-validation scheme {scheme!r} (valid: {', '.join(SCHEMES)})")
    cases = list(getattr(cases_or_dataset, "cases", cases_or_dataset))
    if run is not None and (run.path / "splits.json").exists():
        return load_splits(run.path / "splits.json", cases)
    folds = make_splits(cases, scheme, seed=seed, k=k, val_fraction=val_fraction, n_val=n_val,
                        n_test=n_test)
    if max_folds is not None:
        folds = folds[:max_folds]
    if run is not None and run.writer:
        save_splits(folds, run.path / "splits.json")
    return folds


def _frame(result, index: int):
    import pandas as pd

    df = result if isinstance(result, pd.DataFrame) else pd.DataFrame(list(result))
    df = df.copy()
    df.insert(0, "fold", index)
    return df


def _worker_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _call(fn: Callable, fold: Fold, index: int, sub, kwargs: dict):
    t = time.perf_counter()
    result = fn(fold, index, sub, **kwargs)
    return result, time.perf_counter() - t


def run_folds(fn: Callable, folds: Sequence[Fold], *, run=None, parallel: bool | int = False,
              max_workers: int | None = None, resume: bool = True, threads_per_worker: int | None = None,
              **kwargs):
    """Run ``fn(fold, index, fold_run, **kwargs)`` for every fold; returns the pooled per-case table.

    Parameters
    ----------
    parallel : bool or int
        False: one fold after the other in this process. True or an int: a process pool ("spawn") of
        that many workers (True: ``max_workers`` or ``min(len(folds), os.cpu_count())``).
    threads_per_worker : int, optional
        torch threads per worker process (default: cores / workers).
    resume : bool
        Skip folds whose ``fold_<i>`` sub-run is marked DONE (their metrics.csv is reused).
    """
    import pandas as pd

    if not folds:
        raise ParameterError("run_folds: no folds")
    subs = [run.sub(f"fold_{i}") if run is not None else None for i in range(len(folds))]
    results: dict[int, "pd.DataFrame"] = {}
    todo = []
    for i, sub in enumerate(subs):
        if resume and sub is not None and sub.done and (sub.path / "metrics.csv").exists():
            results[i] = sub.read_metrics()
        else:
            todo.append(i)

    def collect(i: int, result) -> None:
        df = _frame(result, i)
        results[i] = df
        if subs[i] is not None:
            subs[i].write_metrics(df)
            subs[i].mark_done()

    try:
        _run_todo(fn, folds, subs, todo, collect, parallel, max_workers, threads_per_worker, kwargs)
    except BaseException as exc:
        for r in [run] + [s for s in subs if s is not None]:
            if r is not None and not r.done:
                r.mark_failed(f"cross-validation failed: {exc.__class__.__name__}: {exc}")
        raise
    pooled = pd.concat([results[i] for i in sorted(results)], ignore_index=True)
    if run is not None:
        run.write_metrics(pooled)
    return pooled


def _run_todo(fn, folds, subs, todo, collect, parallel, max_workers, threads_per_worker, kwargs):
    n_workers = 0
    if parallel and len(todo) > 1:
        n_workers = (parallel if isinstance(parallel, int) and not isinstance(parallel, bool)
                     else max_workers or min(len(todo), os.cpu_count() or 1))
        n_workers = max(1, min(n_workers, len(todo)))
    if n_workers > 1:
        threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n_workers)
        with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"),
                                    initializer=_worker_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(_call, fn, folds[i], i, subs[i], kwargs): i for i in todo}
            for fut in cf.as_completed(futures):
                result, _ = fut.result()
                collect(futures[fut], result)
    else:
        for i in todo:
            result, _ = _call(fn, folds[i], i, subs[i], kwargs)
            collect(i, result)
