"""Run independent jobs (training jobs of the experiment runner, papermill notebooks) on a local
process pool, a Dask cluster or SLURM: :func:`map_calls` is the one interface.

>>> jobs = [Job("notebooks/li2018.ipynb", "book/runs/cpu/li2018.ipynb", {"profile": "cpu"}), ...]
>>> results = run_jobs(jobs)                                    # local processes
>>> results = run_jobs(jobs, backend="dask", address="tcp://scheduler:8786")
>>> results = run_jobs(jobs, backend="submitit", folder="slurm_logs",
...                    slurm={"partition": "gpu", "gpus_per_node": 1, "timeout_min": 240})

Dask (``dask.distributed``) and submitit are optional imports; asking for a backend that is not
installed raises :class:`~npcrepro.errors.ParameterError` saying what to install.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from npcrepro.errors import ParameterError

__all__ = ["Job", "JobResult", "run_jobs", "execute_job", "map_calls", "BACKENDS"]

BACKENDS = ("process", "serial", "dask", "submitit")


@dataclass
class Job:
    """One notebook execution: ``input`` notebook, ``output`` notebook, papermill ``parameters``."""

    input: str
    output: str
    parameters: dict = field(default_factory=dict)
    cwd: str | None = None
    kernel_name: str | None = None
    timeout: int | None = None      # per-cell execution timeout (s)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.output).stem


@dataclass
class JobResult:
    job: Job
    ok: bool
    seconds: float
    error: str | None = None        # one line
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.job.label}: {'ok' if self.ok else 'FAILED'} ({self.seconds:.1f} s)" + (
            f" - {self.error}" if self.error else "")


def execute_job(job: Job) -> JobResult:
    """Execute one job in this process (papermill); never raises, failures are in the result."""
    t0 = time.perf_counter()
    try:
        import papermill as pm

        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        kw = {}
        if job.kernel_name:
            kw["kernel_name"] = job.kernel_name
        if job.timeout:
            kw["execution_timeout"] = job.timeout
        pm.execute_notebook(job.input, job.output, parameters=dict(job.parameters),
                            cwd=job.cwd, progress_bar=False, **kw)
        return JobResult(job, True, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the pool
        msg = _one_line(exc)
        return JobResult(job, False, time.perf_counter() - t0, msg, traceback.format_exc())


def _one_line(exc: BaseException) -> str:
    # papermill's PapermillExecutionError carries ename/evalue of the failing cell
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


def _init_worker(threads: int) -> None:
    """Pool worker start-up: pin torch's intra-op threads (the cores are shared between workers)."""
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    except ImportError:  # notebook jobs do not need torch in the parent
        pass


def _fail(item, exc: BaseException, desc: str):
    """Re-raise a job's failure: bad input as it is, anything else as RuntimeError naming the item."""
    if isinstance(exc, ParameterError) or type(exc).__name__ == "DataError":
        raise exc
    raise RuntimeError(f"{desc}: {getattr(item, 'label', item)} failed: {type(exc).__name__}: {exc}") from exc


def levels(needs: Sequence[Sequence[int]], what: str = "the items") -> list[list[int]]:
    """Item indices grouped so that each group needs only items of earlier groups (ParameterError on
    a cycle, naming ``what``, or on an unknown index)."""
    n = len(needs)
    if any(not 0 <= d < n for ds in needs for d in ds):
        raise ParameterError("map_calls: a dependency names an item that is not in the list")
    done: set[int] = set()
    left = list(range(n))
    levels = []
    while left:
        level = [i for i in left if set(needs[i]) <= done]
        if not level:
            raise ParameterError(f"{what} depend on each other in a cycle")
        levels.append(level)
        done |= set(level)
        left = [i for i in left if i not in done]
    return levels


def _chain(needs: Sequence[Sequence[int]]) -> list[int]:
    """For each item, the length of the longest chain of items that wait on it (0: none)."""
    out = [0] * len(needs)
    for level in reversed(levels(needs)):
        for i in level:
            for d in needs[i]:
                out[d] = max(out[d], out[i] + 1)
    return out


def map_calls(fn: Callable, items: Sequence, backend: str = "process", *, workers: int = 1,
              threads: int | None = None, address: str | None = None,
              folder: str | os.PathLike = "submitit_logs", slurm: dict | None = None,
              progress: bool = False, desc: str = "jobs",
              needs: Sequence[Sequence[int]] | None = None) -> Iterator[tuple[Any, Any]]:
    """Call ``fn(item)`` for every item and yield ``(item, result)`` as each finishes.

    ``needs[i]`` (optional) lists the indices of the items that item ``i`` must wait for. The process
    pool starts an item as soon as its own needs are done (no barrier between levels): it keeps
    ``workers`` items running and starts first the ready item that the longest chain waits on,
    then, among the rest, one whose needs were just met (a cascade's next stage), then list order.
    The other backends run the levels one after the other.

    The one dispatch interface of the package: the experiment runner's training jobs and the book's
    notebook jobs both go through it. ``fn`` must be importable at module level (it is pickled).

    Parameters
    ----------
    backend : "process" | "serial" | "dask" | "submitit"
        "process": a pool of ``workers`` spawned processes (in this process when ``workers`` is 1 or
        there is one item); "serial": here, one after the other; "dask":
        ``dask.distributed.Client(address)`` (a local cluster when ``address`` is None); "submitit":
        one SLURM job per item (``slurm`` holds executor parameters such as partition,
        gpus_per_node, timeout_min; logs in ``folder``).
    threads : int, optional
        torch threads in each pool worker (default: cores // workers).

    A failing call raises RuntimeError naming the item (``item.label`` when it has one).
    """
    items = list(items)
    if backend not in BACKENDS:
        raise ParameterError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if not items:
        return
    workers = max(1, int(workers))
    if needs is not None and any(needs):
        if len(needs) != len(items):
            raise ParameterError(f"map_calls: {len(needs)} dependency lists for {len(items)} items")
        kw = dict(workers=workers, threads=threads, address=address, folder=folder, slurm=slurm,
                  progress=progress, desc=desc)
        if backend == "process" and workers > 1:
            yield from _map_graph(fn, items, needs, workers, threads, desc)
            return
        for level in levels(needs):
            yield from map_calls(fn, [items[i] for i in level], backend, **kw)
        return

    def fail(item, exc: BaseException):
        _fail(item, exc, desc)

    if backend == "serial" or (backend == "process" and (workers == 1 or len(items) == 1)):
        for item in items:
            try:
                out = fn(item)
            except Exception as exc:  # noqa: BLE001 - re-raised with the item named
                fail(item, exc)
            yield item, out
        return
    if backend == "process":
        n = min(workers, len(items))
        per = threads or max(1, (os.cpu_count() or 1) // n)
        with cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                    initargs=(per,)) as pool:
            futs = {pool.submit(fn, item): item for item in items}
            for f in cf.as_completed(futs):
                item = futs[f]
                try:
                    out = f.result()
                except Exception as exc:  # noqa: BLE001
                    for other in futs:
                        other.cancel()
                    fail(item, exc)
                yield item, out
        return
    if backend == "dask":
        try:
            from dask.distributed import Client, as_completed
        except ImportError:
            raise ParameterError("backend 'dask' needs dask.distributed (pip install 'dask[distributed]')") from None
        client = Client(address) if address else Client(n_workers=workers, threads_per_worker=1,
                                                          processes=True)
        try:
            futs = {client.submit(fn, item, pure=False): item for item in items}
            for f in as_completed(list(futs)):
                try:
                    out = f.result()
                except Exception as exc:  # noqa: BLE001
                    fail(futs[f], exc)
                yield futs[f], out
        finally:
            client.close()
        return
    try:
        import submitit
    except ImportError:
        raise ParameterError("backend 'submitit' needs submitit (pip install submitit)") from None
    executor = submitit.AutoExecutor(folder=str(folder))
    if slurm:
        executor.update_parameters(**slurm)
    with executor.batch():
        sub = [(item, executor.submit(fn, item)) for item in items]
    for item, s in sub:
        try:
            out = s.result()
        except Exception as exc:  # noqa: BLE001
            fail(item, exc)
        yield item, out


def _map_graph(fn: Callable, items: list, needs: Sequence[Sequence[int]], workers: int,
               threads: int | None, desc: str) -> Iterator[tuple[Any, Any]]:
    """The process backend of :func:`map_calls` with dependencies (see there)."""
    chain = _chain(needs)
    waiting = list(range(len(items)))
    finished: set[int] = set()
    n = min(workers, len(items))
    per = threads or max(1, (os.cpu_count() or 1) // n)

    def priority(i: int):
        return (-chain[i], not needs[i], i)

    with cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                initargs=(per,)) as pool:
        running: dict = {}
        while waiting or running:
            ready = sorted((i for i in waiting if set(needs[i]) <= finished), key=priority)
            for i in ready[: n - len(running)]:
                waiting.remove(i)
                running[pool.submit(fn, items[i])] = i
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                try:
                    out = f.result()
                except Exception as exc:  # noqa: BLE001
                    for other in running:
                        other.cancel()
                    _fail(items[i], exc, desc)
                finished.add(i)
                yield items[i], out


def run_jobs(jobs: Sequence[Job], backend: str = "process", *, max_workers: int | None = None,
             address: str | None = None, folder: str | os.PathLike = "submitit_logs",
             slurm: dict | None = None, progress: bool = True) -> list[JobResult]:
    """Execute notebook ``jobs`` (independent) through :func:`map_calls`; results in input order.
    ``max_workers`` defaults to cpu_count // 2 (at least 1) for the process backend."""
    jobs = list(jobs)
    n = max_workers or max(1, (os.cpu_count() or 2) // 2)
    out = {id(j): _report(r, progress) for j, r in map_calls(
        execute_job, jobs, backend, workers=n, address=address, folder=folder, slurm=slurm)}
    return [out[id(j)] for j in jobs]


def _report(result: JobResult, progress: bool) -> JobResult:
    if progress:
        print(result, flush=True)
    return result
